"""Bad input is a clean usage error: exit 2, `error: FILE: KEY: message`, no traceback, no
model call, no store write, and never a secret echoed back.

Every case runs the real CLI in-process against models on a FakeServer, whose request count
must stay at zero.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from oversight.cli import app
from oversight.testing.fakeserver import FakeServer

ITEMS = [{"id": f"q{i}", "question": f"Question {i}?", "choices": ["Yes", "No"], "answer_index": i % 2,
          "context": f"Passage number {i}."} for i in range(3)]
KEY = "sk-proj-" + "Zq9Xw2" * 5  # key-shaped: must never appear in any output
PLAIN = "hunter2secretvalue"  # not key-shaped, but a secret all the same where it is written


@pytest.fixture(scope="module")
def srv():
    server = FakeServer().start_in_thread()
    yield server
    server.stop()


@dataclass
class Work:
    dir: Path
    srv: FakeServer

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    def spec(self, *, top: str = "", model: str = "", data: str = 'datasets = ["items.jsonl"]',
             roles: str = '"*" = "m"', protocols: str = '[[protocols]]\nname = "direct"\n',
             name: str = "bad.toml") -> Path:
        text = (f'name = "bi"\n{top}\n[data]\n{data}\n'
                f'[models.m]\nprovider = "openai"\nmodel = "fake"\n'
                f'base_url = "{self.srv.openai_base_url}"\n{model}\n'
                f'[roles]\n{roles}\n{protocols}')
        return self.write(name, text)

    def protocol(self, folder: str, body: str, name: str = "p.py") -> Path:
        self.write(f"{folder}/{name}", "from oversight import Episode, Verdict, protocol\n"
                   + textwrap.dedent(body))
        return self.dir / folder


@pytest.fixture
def work(tmp_path, monkeypatch, srv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERSIGHT_DB", raising=False)
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    return Work(tmp_path, srv)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args],
                              env={"COLUMNS": "200", "NO_PROXY": "127.0.0.1,localhost",
                                   "OPENAI_API_KEY": None, "ANTHROPIC_API_KEY": None,
                                   "OVERSIGHT_TEST_EMPTY_KEY": ""})


def judge_template(user_block: str) -> str:
    return ('{% extends "_base.j2" %}\n{% block system %}\nYou judge.\n{% endblock %}\n'
            "{% block user %}\n" + user_block + "\n{% endblock %}\n")


def user_protocol(name: str, body: str = "return await ep.agent('judge').decide()",
                  decorator: str = "roles=('judge',)") -> str:
    return f"""
    @protocol({decorator})
    async def {name}(ep: Episode) -> Verdict:
        {body}
    """


def with_judge_prompt(w: Work, proto: str) -> None:
    """A judge template in prompts/, the sibling every protos_* folder's prompts come from."""
    w.write(f"prompts/{proto}/judge.j2", judge_template("Q: {{ question }}"))


def folder(w: Work, name: str) -> Path:
    (w.dir / name).mkdir()
    return w.dir / name


# Each case: work -> (CLI args after `run`, strings the error must contain, secret or None).
Case = Callable[[Work], tuple[list, list[str], str | None]]


def spec_case(must: list[str], secret: str | None = None, extra: tuple = ("--dry-run",), **kw) -> Case:
    def make(w: Work):
        spec = w.spec(**kw)
        return [spec, *extra], [f"error: {spec}: ", *must], secret
    return make


def url_case(old: str, new: str, must: str, secret: str) -> Case:
    def make(w: Work):
        spec = w.spec()
        spec.write_text(spec.read_text().replace(old, new, 1))
        return [spec], [f"error: {spec}: models.m.base_url: ", must], secret
    return make


def data_case(content: str | bytes, must: list[str], name: str = "d.jsonl") -> Case:
    def make(w: Work):
        w.write(name, content)
        spec = w.spec(data=f'datasets = ["{name}"]')
        return [spec], [f"error: {spec}: data.datasets[0]: ", name, *must], None
    return make


def template_case(folder_files: dict[str, str], must: list[str], protocols: str | None = None,
                  extra: tuple = ()) -> Case:
    def make(w: Work):
        for rel, text in folder_files.items():
            w.write(f"myprompts/{rel}", text)
        spec = w.spec(protocols=protocols or '[[protocols]]\nname = "debate"\n')
        return [spec, "--prompts", "myprompts", *extra], ["error: ", *must], None
    return make


def protocol_case(name: str, body: str, must: list[str], files: int = 1) -> Case:
    def make(w: Work):
        folder = w.protocol(f"protos_{name}", body)
        for i in range(1, files):
            w.protocol(f"protos_{name}", body, name=f"p{i}.py")
        with_judge_prompt(w, name)
        spec = w.spec(protocols=f'[[protocols]]\nname = "{name}"\n')
        return [spec, "--protocols", folder], ["error: ", *must], None
    return make


BROKEN_JUDGE = judge_template("Question: {{ question }}\n\n{% include \"_transcript.j2\" %}\n"
                              "Think about {{ foo }}.\n{% include \"_verdict_format.j2\" %}")

def mock_case(options: str, must: list[str]) -> Case:
    """A second model, a mock with these options, for the judge."""
    def make(w: Work):
        spec = w.spec(top="", roles='"*" = "mk"')
        spec.write_text(spec.read_text().replace("[roles]", f'[models.mk]\nprovider = "mock"\n'
                                                             f"options = {options}\n[roles]"))
        return [spec], [f"error: {spec}: ", *must], None
    return make


CASES: dict[str, Case] = {
    # -- D5: templates are rendered before any call ------------------------------------------
    "template_undefined_variable": template_case(
        {"debate/judge.j2": BROKEN_JUDGE},
        ["myprompts/debate/judge.j2:9: protocols[0] (debate), role judge: 'foo' is undefined"]),
    "template_undefined_dry_run": template_case(
        {"direct/judge.j2": BROKEN_JUDGE}, ["direct/judge.j2:9", "role judge", "'foo' is undefined"],
        protocols='[[protocols]]\nname = "direct"\n', extra=("--dry-run",)),
    "template_syntax_error": template_case(
        {"debate/debater.j2": '{% extends "_base.j2" %}\n{% block system %}\n{% if %}\n{% endblock %}\n'},
        ["myprompts/debate/debater.j2:3: protocols[0] (debate), role debater_", "syntax error"]),
    "template_missing_include": template_case(
        {"debate/judge.j2": judge_template('{% include "_nowhere.j2" %}')},
        ["myprompts/debate/judge.j2:6", "role judge", "'_nowhere.j2' not found"]),
    "template_filter_error": template_case(
        {"debate/judge.j2": judge_template("{{ question | letter }}")},
        ["myprompts/debate/judge.j2:6", "role judge", "ValueError"]),
    "template_not_extending_base": template_case(
        {"debate/judge.j2": "Just text, no blocks.\n"},
        ["myprompts/debate/judge.j2", "role judge", "_base.j2"]),
    "template_for_role_missing": protocol_case(
        "bi_notemplate", user_protocol("bi_notemplate", "return await ep.agent('critic').decide()",
                                       "roles=('critic', 'judge'), decides='judge'"),
        ["bi_notemplate/critic.j2", "protocols[0] (bi_notemplate), role critic", "no template"]),
    "template_only_in_sweep_variant": template_case(
        {"debate/judge_question.j2": judge_template("{{ nope }}")},
        ["debate/judge_question.j2:6", "role judge", "'nope' is undefined"],
        protocols='[[protocols]]\nname = "debate"\nparams = { rounds = 2 }\n'
                  'sweep = { "params.judge_questions" = [false, true] }\n'),
    # -- protocol code failing in the trial episode -----------------------------------------
    "protocol_raises_at_run": protocol_case(
        "bi_raises", user_protocol("bi_raises", "raise RuntimeError('kaboom')"),
        ["p.py:5: protocols[0] (bi_raises): RuntimeError: kaboom"]),
    "protocol_unknown_role_at_run": protocol_case(
        "bi_norole", user_protocol("bi_norole", "return await ep.agent('jduge').decide()"),
        ["p.py:5", "protocols[0] (bi_norole)", "no role 'jduge'"]),
    "protocol_returns_something_else": protocol_case(
        "bi_none", user_protocol("bi_none", "await ep.agent('judge').decide()\n        return 'done'"),
        ["p.py:3", "protocols[0] (bi_none)", "returned str; a protocol returns nothing"]),
    # -- D6: prompt and protocol folders ----------------------------------------------------
    "prompts_folder_missing": lambda w: ([w.spec(), "--prompts", "nope"],
                                         ["error: nope: --prompts: prompt folder not found"], None),
    "prompts_folder_is_a_file": lambda w: ([w.spec(), "--prompts", "items.jsonl"],
                                           ["error: items.jsonl: --prompts: expected a folder"], None),
    "protocols_folder_missing": lambda w: ([w.spec(), "--protocols", "nope"],
                                           ["error: nope: --protocols: protocol folder not found"], None),
    "protocols_folder_is_a_file": lambda w: ([w.spec(), "--protocols", "items.jsonl"],
                                             ["error: items.jsonl: --protocols: expected a folder"], None),
    # -- D7: secrets anywhere in a spec -----------------------------------------------------
    "key_in_base_url_query": url_case("/v1", f"/v1?api_key={PLAIN}", "query string", PLAIN),
    "key_shaped_in_base_url_query": url_case("/v1", f"/v1?key={KEY}", "looks like an API key", KEY),
    "key_in_base_url_userinfo": url_case("http://", f"http://user:{PLAIN}@", "user name or password",
                                         PLAIN),
    "key_as_base_url_user": url_case("http://", f"http://{PLAIN}@", "user name or password", PLAIN),
    "key_in_description": spec_case(["description: ", "api_key_env"], KEY,
                                    top=f'description = "note: {KEY}"'),
    "key_in_mock_script": spec_case(["models.s.options.script[0]: "], KEY,
                                    model=f'[models.s]\nprovider = "mock"\noptions = {{ script = ["{KEY}"] }}'),
    "key_in_a_comment": spec_case(["line 2: ", "comments included"], KEY, top=f"# my key: {KEY}"),
    "key_as_model_alias_in_roles": spec_case(["roles.judge: "], KEY, roles=f'"*" = "m"\njudge = "{KEY}"'),
    "key_as_table_name": spec_case(["models: a table key looks like a key"], KEY,
                                   model=f'[models."{KEY}"]\nprovider = "mock"'),
    "key_as_model_name": spec_case(["models.m2.model: "], KEY,
                                   model=f'[models.m2]\nprovider = "openai"\nmodel = "{KEY}"'),
    "aws_key_in_options": spec_case(["models.m.options.note: "], "AKIAABCDEFGHIJKLMNOP",
                                    model='options = { note = "AKIAABCDEFGHIJKLMNOP" }'),
    "github_token_in_name": spec_case(["protocols[0].params.x: "], "ghp_" + "a1B2c3" * 6,
                                      protocols='[[protocols]]\nname = "direct"\nparams = { x = "ghp_'
                                                + "a1B2c3" * 6 + '" }\n'),
    "google_key_in_description": spec_case(["description: "], "AIza" + "Sy0_x" * 7,
                                           top='description = "AIza' + "Sy0_x" * 7 + '"'),
    "hf_token_in_roles": spec_case(["roles.judge: "], "hf_" + "AbCdEf12" * 4,
                                   roles='"*" = "m"\njudge = "hf_' + "AbCdEf12" * 4 + '"'),
    "slack_token_in_description": spec_case(["description: "], "xoxb-1234567890-abcdefghij",
                                            top='description = "xoxb-1234567890-abcdefghij"'),
    "key_in_extra_query_option": spec_case(["models.m: ", "options.extra_query.key"], PLAIN,
                                           model=f'options = {{ extra_query = {{ key = "{PLAIN}" }} }}'),
    # -- D8: api_key_env holding the key itself ---------------------------------------------
    "api_key_env_is_a_key": spec_case(["models.m.api_key_env: ", "NAME of an environment variable"],
                                      KEY, model=f'api_key_env = "{KEY}"'),
    "api_key_env_is_not_a_name": spec_case(["models.m.api_key_env: ", "not the key itself"], PLAIN + "-x",
                                           model=f'api_key_env = "{PLAIN}-x"'),
    "api_key_env_unset_lowercase_not_echoed": spec_case(
        ["models.m.api_key_env: ", "named in api_key_env is not set"], PLAIN,
        model=f'api_key_env = "{PLAIN}"'),
    "api_key_env_set_but_empty": spec_case(["models.m.api_key_env: ", "OVERSIGHT_TEST_EMPTY_KEY is not set"],
                                           model='api_key_env = "OVERSIGHT_TEST_EMPTY_KEY"'),
    "anthropic_without_key": spec_case(["models.c: ", "ANTHROPIC_API_KEY"],
                                       model='[models.c]\nprovider = "anthropic"\nmodel = "claude-x"',
                                       roles='"*" = "c"'),
    # -- D9: numbers out of range, nothing to run -------------------------------------------
    "max_tokens_negative": spec_case(["models.m.max_tokens: ", "greater than or equal to 1"],
                                     model="max_tokens = -1"),
    "max_tokens_zero": spec_case(["models.m.max_tokens: "], model="max_tokens = 0"),
    "max_tokens_bool": spec_case(["models.m.max_tokens: "], model="max_tokens = true"),
    "max_tokens_float": spec_case(["models.m.max_tokens: "], model="max_tokens = 12.5"),
    "temperature_negative": spec_case(["models.m.temperature: "], model="temperature = -0.5"),
    "temperature_huge": spec_case(["models.m.temperature: "], model="temperature = 7.0"),
    "temperature_nan": spec_case(["models.m.temperature: "], model="temperature = nan"),
    "price_input_negative": spec_case(["models.m.price.input: "], model="price = { input = -1.0, output = 1.0 }"),
    "price_output_negative": spec_case(["models.m.price.output: "], model="price = { input = 1.0, output = -2 }"),
    "price_cached_negative": spec_case(["models.m.price.cached_input: "],
                                       model="price = { input = 1.0, output = 1, cached_input = -0.1 }"),
    "price_infinite": spec_case(["models.m.price.input: "], model="price = { input = inf, output = 1 }"),
    "retry_zero_attempts": spec_case(["models.m.retry.max_attempts: "], model="retry = { max_attempts = 0 }"),
    "retry_negative_backoff": spec_case(["models.m.retry.backoff_max: "], model="retry = { backoff_max = -1 }"),
    "timeout_zero": spec_case(["models.m.timeout: "], model="timeout = 0"),
    "model_concurrency_zero": spec_case(["models.m.concurrency: "], model="concurrency = 0"),
    "budget_negative": spec_case(["budget.usd: "], top="[budget]\nusd = -5.0\n"),
    "budget_nan": spec_case(["budget.usd: "], top="[budget]\nusd = nan\n"),
    "empty_dataset": data_case("", ["has no items"]),
    "blank_lines_dataset": data_case("\n   \n\n", ["has no items"]),
    "schedule_assigns_nothing": protocol_case(
        "bi_noplan", user_protocol("bi_noplan",
                                   decorator="roles=('judge',), assign=lambda item, adv, rng: []"),
        ["protocols[0]: plans no episodes"]),
    "sweep_empty_list": spec_case(["protocols[0].sweep.params.rounds: ", "non-empty"],
                                  protocols='[[protocols]]\nname = "debate"\nsweep = { "params.rounds" = [] }\n'),
    # -- D10: unreadable files and broken protocol modules ----------------------------------
    "spec_not_utf8": lambda w: ([w.write("bad.toml", b'name = "caf\xe9"\n')],
                                [f"error: {w.dir / 'bad.toml'}: <file>: not UTF-8", "line 1, column 12"],
                                None),
    "dataset_not_utf8": data_case(b'{"id": "a", "question": "caf\xe9?"}\n', ["d.jsonl:1", "not UTF-8"]),
    "dataset_is_a_folder": lambda w: (
        [folder(w, "dsdir") and w.spec(data='datasets = ["dsdir"]')],
        [f"error: {w.dir / 'bad.toml'}: data.datasets[0]: 'dsdir' is a folder"], None),
    "protocol_import_raises": protocol_case(
        "bi_imp_rt", "x = 1\nraise RuntimeError('broken at import')\n",
        ["p.py:3: cannot load protocols: RuntimeError: broken at import"]),
    "protocol_import_name_error": protocol_case(
        "bi_imp_ne", "\n\nundefined_thing()\n", ["p.py:4: cannot load protocols: NameError"]),
    "protocol_missing_module": protocol_case(
        "bi_imp_mnf", "import no_such_module_anywhere\n",
        ["p.py:2: cannot load protocols: ModuleNotFoundError", "no_such_module_anywhere"]),
    "protocol_syntax_error": protocol_case(
        "bi_syn", "def broken(:\n    pass\n", ["p.py:2: cannot load protocols: SyntaxError"]),
    "protocol_unknown_schedule": protocol_case(
        "bi_sched", user_protocol("bi_sched", decorator="roles=('judge',), assign='two_sidded'"),
        ["p.py:3: cannot load protocols: ValueError", "'two_sidded'", "two_sided"]),
    "protocol_exits_at_import": protocol_case(
        "bi_exit", "import sys\nsys.exit(3)\n", ["p.py:3: cannot load protocols: SystemExit"]),
    # -- beyond the list: other hostile inputs ----------------------------------------------
    "spec_is_a_folder": lambda w: ([folder(w, "dir.toml")],
                                   [f"error: {w.dir / 'dir.toml'}: <file>: is a folder"], None),
    "spec_missing": lambda w: ([w.dir / "none.toml"], [f"error: {w.dir / 'none.toml'}: <file>: cannot read"],
                               None),
    "spec_empty": lambda w: ([w.write("bad.toml", "")], [f"error: {w.dir / 'bad.toml'}: <file>: is empty"], None),
    "spec_whitespace": lambda w: ([w.write("bad.toml", "\n  \n")], ["<file>: is empty"], None),
    "spec_nul_byte": lambda w: ([w.write("bad.toml", b'name = "a\x00"\n')], ["bad.toml: <toml>: "], None),
    "spec_nul_escape": spec_case(["description: ", "NUL"], top='description = "a\\u0000b"'),
    "spec_binary": lambda w: ([w.write("bad.toml", bytes(range(256)))], ["bad.toml: <file>: not UTF-8"], None),
    "concurrency_huge": spec_case(["concurrency: "], top="concurrency = 100000000000000000000000"),
    "seed_huge": spec_case(["seed: "], top="seed = 100000000000000000000000"),
    "seed_string": spec_case(["seed: ", "valid integer"], top='seed = "5"'),
    "limit_negative": spec_case(["data.limit: "], data='datasets = ["items.jsonl"]\nlimit = -1'),
    "limit_string": spec_case(["data.limit: "], data='datasets = ["items.jsonl"]\nlimit = "2"'),
    "sweep_not_a_list": spec_case(["protocols[0].sweep.params.rounds: ", "valid list"],
                                  protocols='[[protocols]]\nname = "debate"\nsweep = { "params.rounds" = 3 }\n'),
    "protocols_not_an_array": spec_case(["protocols: ", "valid list"],
                                        protocols='[protocols]\nname = "direct"\n'),
    "cli_limit_zero": lambda w: ([w.spec(), "--limit", "0"], ["error: --limit: ", "at least 1"], None),
    "dataset_empty_name": spec_case(["data.datasets[0]: ", "empty string"], data='datasets = [""]'),
    "dataset_row_is_a_list": data_case('["q1", "Question?", ["a", "b"], 0]\n',
                                       ["d.jsonl:1", "expected a JSON object"]),
    "dataset_one_choice": data_case(json.dumps({**ITEMS[0], "choices": ["Only"]}) + "\n",
                                    ["d.jsonl:1", "'choices'"]),
    "dataset_answer_out_of_range": data_case(json.dumps({**ITEMS[0], "answer_index": 2}) + "\n",
                                             ["d.jsonl:1", "'answer_index'"]),
    # CSV loads (cells holding JSON are read as JSON); "a|b" is not a list of choices
    "dataset_csv": data_case("id,question,choices,answer_index\nq1,Why?,a|b,0\n",
                             ["d.csv:2", "'choices'"], name="d.csv"),
    "dataset_nul": data_case(json.dumps({**ITEMS[0], "question": "a\x00b"}) + "\n", ["d.jsonl:1", "NUL"]),
    "dataset_is_a_device": spec_case(["data.datasets[0]: ", "not a regular file"],
                                     data='datasets = ["/dev/zero"]'),
    "mapping_to_unknown_field": spec_case(["data.mapping.prompt: ", "expected one of the item fields"],
                                          data='datasets = ["items.jsonl"]\nmapping = { prompt = "qestion" }'),
    "mapping_two_fields_to_one": spec_case(["data.mapping.", "also the target"],
                                           data='datasets = ["items.jsonl"]\n'
                                                'mapping = { prompt = "question", text = "question" }'),
    "dataset_bool_id": data_case(json.dumps({**ITEMS[0], "id": True}) + "\n", ["d.jsonl:1", "'id'"]),
    "two_protocols_same_name": protocol_case(
        "bi_twice", user_protocol("bi_twice"), ["p1.py", "bi_twice", "already defined in"], files=2),
    "same_name_twice_in_one_file": protocol_case(
        "bi_dup", user_protocol("bi_dup") + user_protocol("bi_dup2", decorator="roles=('judge',), name='bi_dup'"),
        ["p.py:7: cannot load protocols: protocol 'bi_dup' is defined twice"]),
    "protocol_roles_a_string": protocol_case(
        "bi_str", user_protocol("bi_str", decorator="roles=('judge')"),
        ["p.py:3: cannot load protocols: TypeError", "note the comma"]),
    "protocol_judge_not_a_role": protocol_case(
        "bi_judge", user_protocol("bi_judge", decorator="roles=('a', 'b'), judge='c'"),
        ["p.py:3: cannot load protocols: TypeError", "'c' is not one of"]),
    # checked when the decorator runs: two_sided assigns two advocates, the protocol has three
    "protocol_schedule_needs_two_advocates": protocol_case(
        "bi_adv", user_protocol("bi_adv", decorator="roles=('a', 'b', 'c', 'judge'), "
                                "decides='judge', assign='two_sided'"),
        ["p.py:3", "cannot load protocols", "assigns answers to 2 advocate(s)", "('a', 'b', 'c')"]),
    "protocol_decider_not_named": protocol_case(
        "bi_nodecider", user_protocol("bi_nodecider", decorator="roles=('critic', 'judge')"),
        ["p.py:3", "name the role whose answer is the protocol's with decides="]),
    # -- issue 9: scripted mock models are checked before any call ---------------------------
    "mock_rule_without_reply": mock_case('{ rules = [{ match = "x" }] }',
                                         ["models.mk.options.rules[0]: ", "match", "reply"]),
    "mock_rule_not_a_table": mock_case('{ rules = ["x"] }', ["models.mk.options.rules[0]: "]),
    "mock_script_empty": mock_case("{ script = [] }", ["models.mk.options.script: "]),
    "mock_unknown_option": mock_case("{ scirpt = ['A'] }", ["models.mk.options.scirpt: ", "unknown"]),
    "mock_negative_delay": mock_case("{ delay = -1 }", ["models.mk.options.delay: "]),
    "role_the_protocol_lacks": spec_case(["protocols[0].roles.critic: ", "has no role 'critic'"],
                                         protocols='[[protocols]]\nname = "direct"\nroles = { critic = "m" }\n'),
    "top_level_role_no_protocol_has": spec_case(["roles.jduge: ", "no protocol in this spec"],
                                                roles='"*" = "m"\njduge = "m"'),
    "unknown_disposition": spec_case(["protocols[0].dispositions.judge: "],
                                     protocols='[[protocols]]\nname = "direct"\ndispositions = { judge = "evil" }\n'),
    "base_url_not_http": spec_case(["models.m2.base_url: ", "http(s) URL"],
                                   model='[models.m2]\nprovider = "openai"\nbase_url = "localhost:8000"'),
    "unknown_provider": spec_case(["models.m2.provider: "], model='[models.m2]\nprovider = "opneai"'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clean_usage_error(work, case):
    args, must, secret = CASES[case](work)
    db = work.dir / "store.db"
    before = work.srv.stats["received"]
    result = cli("run", *args, "--db", db)
    out = result.stdout + result.stderr
    assert result.exit_code == 2, out
    assert result.stderr.startswith("error: "), out
    for text in must:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert work.srv.stats["received"] == before  # not a single request reached the model
    assert not db.exists()  # nothing written, not even an empty store
    if secret:
        assert secret not in out


def test_a_good_spec_passes_the_same_checks(work):
    # The baseline the cases above break: accepted, preflighted, no call on a dry run.
    spec = work.spec(protocols='[[protocols]]\nname = "debate"\n[[protocols]]\nname = "direct"\n')
    before = work.srv.stats["received"]
    result = cli("run", spec, "--dry-run")
    assert result.exit_code == 0, result.output
    assert work.srv.stats["received"] == before
    # A byte-order mark (Windows editors) is not an error.
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    assert cli("run", spec, "--dry-run").exit_code == 0


def test_broken_judge_template_costs_no_debater_call(work):
    """D5: a debate whose judge template is broken used to spend every debater call first."""
    work.write("myprompts/debate/judge.j2", BROKEN_JUDGE)
    spec = work.spec(protocols='[[protocols]]\nname = "debate"\n')
    before = work.srv.stats["received"]
    result = cli("run", spec, "--prompts", "myprompts", "--db", work.dir / "s.db", "-q")
    assert result.exit_code == 2, result.output
    assert work.srv.stats["received"] == before
    assert "judge.j2:9: protocols[0] (debate), role judge: 'foo' is undefined" in result.stderr


def _snapshot(db: Path) -> tuple[str, dict[str, list]]:
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return digest, {t: con.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
    finally:
        con.close()


@pytest.mark.parametrize("bad", ["max_tokens", "template", "secret"])
def test_bad_input_leaves_an_existing_store_untouched(work, bad):
    db = work.dir / "store.db"
    good = work.spec(name="good.toml")
    first = cli("run", good, "--db", db, "-q")
    assert first.exit_code == 0, first.output
    digest, rows = _snapshot(db)
    assert rows["runs"] and rows["episodes"]
    args = {"max_tokens": [work.spec(model="max_tokens = -1")],
            "template": [good, "--prompts", work.write("p/direct/judge.j2", BROKEN_JUDGE).parent.parent],
            "secret": [work.spec(top=f'description = "{KEY}"')]}[bad]
    result = cli("run", *args, "--db", db)
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert KEY not in result.output
    assert _snapshot(db) == (digest, rows)


def test_preflight_tries_the_first_item_of_each_dataset_only(work):
    # A protocol that fails on one later item fails that episode in the run, not the run.
    folder = work.protocol("protos_late", user_protocol(
        "bi_late", "if ep.item.id == 'q2': raise RuntimeError('late')\n"
                   "        return await ep.agent('judge').decide()"))
    with_judge_prompt(work, "bi_late")
    spec = work.spec(protocols='[[protocols]]\nname = "bi_late"\n')
    result = cli("run", spec, "--protocols", folder, "--dry-run")
    assert result.exit_code == 0, result.output  # the dry run's estimate goes on past it too
    assert "late" not in result.output


def test_a_protocol_that_never_finishes_is_named(work, monkeypatch):
    import oversight.batch.preflight
    monkeypatch.setattr(oversight.batch.preflight, "TRIAL_SECONDS", 0.2)
    folder = work.protocol("protos_slow", user_protocol(
        "bi_slow", "import asyncio\n        await asyncio.sleep(60)"))
    with_judge_prompt(work, "bi_slow")
    result = cli("run", work.spec(protocols='[[protocols]]\nname = "bi_slow"\n'),
                 "--protocols", folder, "--db", work.dir / "s.db")
    assert result.exit_code == 2, result.output
    assert "p.py: protocols[0] (bi_slow): did not finish within 0.2 s" in result.stderr
    assert not (work.dir / "s.db").exists()
