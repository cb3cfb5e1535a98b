"""Who persuades the judge: matches between advocate models, win rates, and Bradley–Terry
ratings on the Elo scale with cluster-bootstrap intervals. Pure functions over result rows
(base.py states the row contract).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from .base import (
    HUGE,
    Columns,
    Frozen,
    choice_index,
    factorize,
    first_codes,
    identity_codes,
    proportion,
)
from .metrics import _CHUNK_VALUES


class Match(Frozen):
    """One episode as a match: the advocate whose answer the judge chose won."""

    episode: Any  # the row's id
    cluster: str  # the independent unit: document, else item (base.cluster_key)
    winner: str  # model names
    loser: str
    winner_role: str
    loser_role: str
    winner_correct: bool | None  # whether the winner argued the correct answer
    loser_correct: bool | None


class Matches(Frozen):
    """The matches of a set of rows and the rows that made none, by reason (`matches`)."""

    matches: list[Match]
    not_two_advocates: int  # the assignment does not name exactly two roles with a choice
    same_answer: int  # both advocates argued the same answer: no contest
    unargued: int  # the judge chose an answer neither advocate argued: no winner
    no_model: int  # an advocate's role has no model in role_models
    self_play: int  # both advocates are one model: says nothing of relative strength
    no_choice: int  # parsed, but the answer is not a choice index
    unparsed: int
    no_answer: int
    not_done: int


def matches(rows: Iterable[dict]) -> Matches:
    """One match per answered row (finished, parsed, chosen a choice index) whose assignment
    names exactly two roles with a choice index as answer, between the models role_models
    gives them: the role whose answer == chosen wins. Rows that make no match are counted by
    the first reason that applies, in this order: not two advocates, same answer (no
    contest), unargued (the chosen answer is neither advocate's: nobody won), no model, self
    play (both advocates one model: a win and a loss for the same model, no information on
    relative strength, and it would pull win rates to ½)."""
    cols = Columns.of(rows, MATCH_KEYS)
    counts, at, played = _play(cols)
    names, ids = cols.cluster_names(), cols["id"]
    out = [Match.model_construct(  # fields built right here: skip validation
        episode=ids[i], cluster=names[x.cluster], winner=x.winner, loser=x.loser,
        winner_role=x.winner_role, loser_role=x.loser_role, winner_correct=x.winner_correct,
        loser_correct=x.loser_correct) for i, x in zip(at.tolist(), played, strict=True)]
    return Matches(matches=out, **counts)


MATCH_KEYS = ("id", "status", "parsed", "correct", "chosen", "assignment", "role_models",
              "document", "item_id")  # what `matches` reads


class _Played(NamedTuple):
    """A match as the ratings read it: a `Match` whose cluster is a `cluster_keys` code."""

    winner: str
    loser: str
    winner_role: str
    loser_role: str
    winner_correct: bool | None
    loser_correct: bool | None
    cluster: int = -1


_REASONS = ("not_two_advocates", "same_answer", "unargued", "no_model", "self_play", "no_choice",
            "unparsed", "no_answer", "not_done")


def _play(cols: Columns) -> tuple[dict[str, int], np.ndarray, list[_Played]]:
    """The matches of the rows of `cols` as `matches` defines them: the rows that made none,
    counted by reason; the positions of those that did, and their matches. The outcome is
    worked out once per distinct (assignment, role_models, chosen) of the answered rows."""
    ok, state = cols.answered(), cols.state()
    left = state[~ok]
    counts = dict.fromkeys(_REASONS, 0)
    for code, name in ((1, "not_done"), (2, "no_answer"), (3, "unparsed")):
        counts[name] = int(np.count_nonzero(left == code))
    counts["no_choice"] = int(np.count_nonzero((left == 0) | (left == 4)))
    rows = np.flatnonzero(ok)
    if not rows.size:
        return counts, rows, []
    assignment, assignments = identity_codes(cols["assignment"][rows].tolist())
    model, models = identity_codes(cols["role_models"][rows].tolist())
    chosen = cols.choice("chosen")[rows]
    choices: list | None = None  # the chosen values by code, when a code is not the value
    if (chosen == HUGE).any():  # beyond an intp: the values themselves
        values = [int(x) for x in cols["chosen"][rows]]
        chosen, choices = factorize(values)[0], list(dict.fromkeys(values))
    chosen_code, n_chosen = first_codes(chosen)
    combo = (assignment.astype(np.int64) * len(models) + model) * n_chosen + chosen_code
    inverse, _ = first_codes(combo)
    first = np.unique(inverse, return_index=True)[1]  # a row of each combination
    outcomes = [_outcome(assignments[assignment[i]], models[model[i]],
                         int(chosen[i]) if choices is None else choices[chosen[i]])
                for i in first.tolist()]
    reason = np.array([_REASONS.index(o) if isinstance(o, str) else -1 for o in outcomes])
    per_row = reason[inverse]
    for code in np.unique(per_row[per_row >= 0]).tolist():
        counts[_REASONS[code]] = int(np.count_nonzero(per_row == code))
    won = per_row < 0
    at, which = rows[won], inverse[won]
    cluster = cols.cluster_keys()[at]
    return counts, at, [outcomes[w]._replace(cluster=c)
                        for w, c in zip(which.tolist(), cluster.tolist(), strict=True)]


def _outcome(assignment: dict | None, models: dict | None, chosen: int) -> str | _Played:
    """The match of an answered row (its cluster left out), or the reason it makes none."""
    adv = [(role, a) for role, a in (assignment or {}).items()
           if isinstance(a, dict) and choice_index(a.get("answer")) is not None]
    if len(adv) != 2:
        return "not_two_advocates"
    (r1, a1), (r2, a2) = adv
    models = models or {}
    if a1["answer"] == a2["answer"]:
        return "same_answer"
    if chosen not in (a1["answer"], a2["answer"]):
        return "unargued"
    if models.get(r1) is None or models.get(r2) is None:
        return "no_model"
    if models[r1] == models[r2]:
        return "self_play"
    (wr, wa), (lr, la) = ((r1, a1), (r2, a2)) if a1["answer"] == chosen else ((r2, a2), (r1, a1))
    return _Played(winner=str(models[wr]), loser=str(models[lr]), winner_role=str(wr),
                   loser_role=str(lr), winner_correct=_bool(wa.get("correct")),
                   loser_correct=_bool(la.get("correct")))


def _bool(x: object) -> bool | None:
    return None if x is None else bool(x)


def _list(m: Matches | Iterable[Match]) -> list[Match]:
    return list(m.matches) if isinstance(m, Matches) else list(m)


class WinRate(Frozen):
    """One model's record (`win_rates`)."""

    model: str
    matches: int
    wins: int
    win_rate: float  # a model is listed only when it played
    lo: float  # Wilson at n/deff, clusters as accuracy_interval
    hi: float
    correct_matches: int  # matches in which it argued the correct answer
    correct_wins: int
    correct_win_rate: float | None  # None when it never argued the correct answer
    incorrect_matches: int
    incorrect_wins: int
    incorrect_win_rate: float | None
    unknown_correctness: int  # matches where its side's correctness is None


def win_rates(m: Matches | Iterable[Match], level: float = 0.95) -> list[WinRate]:
    """Per model, sorted by name: win rate = wins / matches, with a Wilson interval at the
    effective size of `accuracy_interval` (matches of one document are one cluster); and the
    same split by whether the model argued the correct answer or the incorrect one."""
    sides: dict[str, list[tuple[bool, bool | None, str]]] = {}
    for x in _list(m):
        sides.setdefault(x.winner, []).append((True, x.winner_correct, x.cluster))
        sides.setdefault(x.loser, []).append((False, x.loser_correct, x.cluster))
    out = []
    for model in sorted(sides):
        s = sides[model]
        est = proportion([w for w, _, _ in s], factorize([c for _, _, c in s])[0], level)
        split = {flag: [w for w, c, _ in s if c is flag] for flag in (True, False)}
        out.append(WinRate(
            model=model, matches=len(s), wins=sum(w for w, _, _ in s), win_rate=est["mean"],
            lo=est["lo"], hi=est["hi"], correct_matches=len(split[True]),
            correct_wins=sum(split[True]),
            correct_win_rate=sum(split[True]) / len(split[True]) if split[True] else None,
            incorrect_matches=len(split[False]), incorrect_wins=sum(split[False]),
            incorrect_win_rate=sum(split[False]) / len(split[False]) if split[False] else None,
            unknown_correctness=sum(1 for _, c, _ in s if c is None)))
    return out


class Rating(Frozen):
    """One model's Bradley–Terry rating (`bradley_terry`)."""

    model: str
    rating: float | None  # Elo scale; None when its MLE does not exist (see reason)
    lo: float | None  # percentile cluster bootstrap
    hi: float | None
    matches: int  # all its matches, also those outside the fit
    wins: int
    reason: str | None  # why rating is None


class BradleyTerry(Frozen):
    """Bradley–Terry ratings of the models of a set of matches (`bradley_terry`)."""

    ratings: list[Rating]  # sorted by name
    matches: int  # among the rated models (the fit)
    clusters: int  # resampling units among them
    converged: bool
    resamples_used: int
    resamples_skipped: int  # resamples where the MLE does not exist (not strongly connected)
    n_resamples: int
    seed: int
    level: float
    scale: str = "Elo: 400·log10(strength), mean 0 over the rated models"


def _mm(w: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, tol: float = 1e-12,
        max_iter: int = 100_000) -> tuple[np.ndarray, bool]:
    """MM iterations (Hunter 2004) for rows of pair weights w (resamples × pairs), pair j
    a[j] beat b[j]: p_i ← W_i / Σ_j n_ij/(p_i + p_j), then normalised to geometric mean 1.
    Returns log p (resamples × models) and whether every row converged."""
    onehot_a, onehot_b = np.eye(k)[a], np.eye(k)[b]
    wins, both = w @ onehot_a, onehot_a + onehot_b
    logp = np.zeros((w.shape[0], k))
    for _ in range(max_iter):
        p = np.exp(logp)
        new = np.log(wins / ((w / (p[:, a] + p[:, b])) @ both))
        new -= new.mean(axis=1, keepdims=True)
        done = np.abs(new - logp).max() < tol
        logp = new
        if done:
            return logp, True
    return logp, False


def _reach(adj: np.ndarray) -> np.ndarray:
    """Reachability (… × k × k boolean, i → j when i beat j) by repeated squaring."""
    k = adj.shape[-1]
    reach = adj | np.eye(k, dtype=bool)
    for _ in range(max(1, int(np.ceil(np.log2(max(k, 2)))))):
        reach = (reach.astype(float) @ reach.astype(float)) > 0
    return reach


def _strongly_connected(adj: np.ndarray) -> np.ndarray:
    """Per win graph: is every model reachable from every other through chains of wins?
    (Ford 1957, Zermelo 1929: then, and only then, the MLE exists.)"""
    return _reach(adj).all(axis=(-2, -1))


def bradley_terry(m: Matches | Iterable[Match], n_resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> BradleyTerry:
    """P(i beats j) = p_i / (p_i + p_j); p the maximum-likelihood strengths (MM algorithm),
    reported as rating_i = 400·log10 p_i − mean over the rated models (A beating B 3 times
    in 4: p_A/p_B = 3, a difference of 400·log10 3 ≈ 190.85).

    The MLE exists only for a strongly connected win graph (each model reachable from each
    through chains of wins). Models are fitted on the largest strongly connected group
    (ties: the one with more matches, then names), on the matches among them; that is the
    limit of the full MLE, in which the others' ratings run to ±∞. Every other model is
    listed with rating None and a reason (never won, never lost, or outside the group).
    Intervals: percentile bootstrap resampling clusters (documents, else items) of the
    fitted matches; resamples whose graph is not strongly connected are skipped and counted.
    """
    ms = _list(m)
    names = sorted({x.winner for x in ms} | {x.loser for x in ms})
    ix = {n: i for i, n in enumerate(names)}
    k = len(names)
    beat = np.zeros((k, k))
    for x in ms:
        beat[ix[x.winner], ix[x.loser]] += 1
    reach = _reach(beat > 0)
    groups = {tuple(int(j) for j in np.flatnonzero(reach[i] & reach[:, i])) for i in range(k)}
    played = beat + beat.T
    best = max((g for g in groups if len(g) > 1), default=(),
               key=lambda g: (len(g), played[np.ix_(g, g)].sum(), [-i for i in g]))
    fit = [x for x in ms if ix[x.winner] in best and ix[x.loser] in best]
    pos = {i: j for j, i in enumerate(best)}
    pairs = sorted({(pos[ix[x.winner]], pos[ix[x.loser]]) for x in fit})
    a = np.array([p[0] for p in pairs], dtype=int)
    b = np.array([p[1] for p in pairs], dtype=int)
    pair_of = {p: j for j, p in enumerate(pairs)}
    logp, converged = np.zeros((1, len(best))), True
    lo = hi = None
    used = skipped = 0
    clusters = 0
    if best:
        counts = Counter((x.cluster, pair_of[(pos[ix[x.winner]], pos[ix[x.loser]])]) for x in fit)
        cl, clusters = factorize([c for c, _ in counts])
        per = np.zeros((clusters, len(pairs)))  # wins per cluster and ordered pair
        np.add.at(per, (cl, [p for _, p in counts]), list(counts.values()))
        logp, converged = _mm(per.sum(axis=0, keepdims=True), a, b, len(best))
        rng, stats = np.random.default_rng(seed), []
        chunk = max(1, min(n_resamples, _CHUNK_VALUES // max(clusters, len(best) ** 2, 1)))
        for start in range(0, n_resamples, chunk):
            size = min(chunk, n_resamples - start)
            draws = rng.integers(0, clusters, size=(size, clusters)) + clusters * np.arange(
                size)[:, None]
            wts = np.bincount(draws.ravel(), minlength=size * clusters).reshape(size, clusters)
            w = wts @ per
            adj = np.zeros((size, len(best), len(best)), dtype=bool)
            adj[:, a, b] = w > 0
            ok = _strongly_connected(adj)
            skipped += int((~ok).sum())
            if ok.any():
                stats.append(_mm(w[ok], a, b, len(best), tol=1e-9, max_iter=10_000)[0])
        if stats:
            boot = np.concatenate(stats) * 400 / np.log(10)
            used = boot.shape[0]
            alpha = (1 - level) / 2
            lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    elo = logp[0] * 400 / np.log(10)
    ratings = []
    for i, name in enumerate(names):
        wins, games = int(beat[i].sum()), int(played[i].sum())
        if i in pos:
            j = pos[i]
            ratings.append(Rating(model=name, rating=float(elo[j]), matches=games, wins=wins,
                                  lo=None if lo is None else float(lo[j]),
                                  hi=None if hi is None else float(hi[j]), reason=None))
            continue
        reason = ("never won (MLE rating −∞)" if wins == 0 else
                  "never lost (MLE rating +∞)" if wins == games else
                  "outside the rated group: no chain of wins both ways links it to the rated "
                  "models (MLE infinite or not identified)")
        ratings.append(Rating(model=name, rating=None, lo=None, hi=None, matches=games,
                              wins=wins, reason=reason))
    return BradleyTerry(ratings=ratings, matches=len(fit), clusters=clusters,
                        converged=converged, resamples_used=used, resamples_skipped=skipped,
                        n_resamples=n_resamples, seed=seed, level=level)


__all__ = ["BradleyTerry", "Match", "Matches", "Rating", "WinRate", "bradley_terry", "matches",
           "win_rates"]
