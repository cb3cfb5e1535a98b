"""A llama.cpp server (via xllamacpp) for one local model, run as its own process.

    python -m oversight.models.local_server --model NAME --port 0 --ctx 4096 --parallel 4 --threads 2

Prints `OVERSIGHT_LOCAL_SERVER_READY <url>` on stdout once the model is loaded, then serves
until stdin closes or SIGTERM arrives. Watching stdin ties the server's life to its parent:
if the parent dies, even by SIGKILL, the pipe closes and the server exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

READY = "OVERSIGHT_LOCAL_SERVER_READY"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oversight.models.local_server")
    ap.add_argument("--model", required=True, help="a name from oversight.models.weights.MODELS")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--ctx", type=int, default=4096, help="context tokens per parallel slot")
    ap.add_argument("--parallel", type=int, default=4, help="requests decoded at once")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    # Idle OpenMP workers spin by default; on a small box they steal the cores that decode.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    # llama.cpp writes to fd 1 as well as fd 2; keep the real stdout for the READY line only,
    # so the parent's pipe carries nothing else and can never fill up.
    ready_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    from .weights import ensure_weights, get_model

    model = get_model(args.model)
    path = ensure_weights(model.name)

    import xllamacpp as xlc  # after OMP_WAIT_POLICY: the OpenMP runtime reads it when loaded

    p = xlc.CommonParams()
    p.model.path = str(path)
    p.model_alias = {model.name}  # so responses report the model's name, not a file path
    p.n_parallel = args.parallel
    p.n_ctx = args.ctx * args.parallel  # llama.cpp splits n_ctx evenly across the slots
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    p.ui = False
    p.endpoint_metrics = True  # /metrics lets tests and benchmarks see batching at work
    p.cache_ram_mib = 512  # host-RAM prompt cache; llama.cpp's default allows 8 GiB
    for key, value in model.server.items():
        setattr(p, key, value)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    server = xlc.Server(p)  # returns once the model is loaded and the socket is listening
    try:
        ready_out.write(f"{READY} {server.listening_address}\n")
        ready_out.flush()
        ready_out.close()
        while sys.stdin.buffer.read(65536):  # returns b"" when the parent closes the pipe
            pass
    except KeyboardInterrupt:
        pass
    finally:
        del server  # joins llama.cpp's threads cleanly
    return 0


if __name__ == "__main__":
    sys.exit(main())
