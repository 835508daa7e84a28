"""An embedded few-shot intent corpus: templated requests whose intent is an (action, object) pair.

Nothing is downloaded: 12 actions x 12 objects give 144 intents ("cancel/subscription", "track/package", ...),
each phrased through shared templates, synonyms of its action and object, and slot words (times, places). Intents
share words with one another (every "cancel/..." says cancel), so a class is recognised only from its pair of
words in context, as in real intent-detection sets. Deterministic from a seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ACTIONS", "OBJECTS", "all_intents", "generate_intents"]

#: Each action with its phrasings (the first is its name).
ACTIONS: dict[str, tuple[str, ...]] = {
    "book": ("book", "reserve", "schedule"),
    "cancel": ("cancel", "call off", "stop"),
    "check": ("check", "look up", "see"),
    "change": ("change", "update", "modify"),
    "find": ("find", "search for", "locate"),
    "pay": ("pay", "settle", "cover"),
    "order": ("order", "buy", "get"),
    "track": ("track", "follow", "trace"),
    "report": ("report", "flag", "complain about"),
    "renew": ("renew", "extend", "prolong"),
    "share": ("share", "send", "forward"),
    "rate": ("rate", "review", "score"),
}

#: Each object with its phrasings (the first is its name).
OBJECTS: dict[str, tuple[str, ...]] = {
    "flight": ("flight", "plane ticket", "airfare"),
    "hotel": ("hotel room", "hotel", "lodging"),
    "card": ("credit card", "card", "debit card"),
    "bill": ("bill", "invoice", "utility bill"),
    "meal": ("pizza", "dinner", "takeaway"),
    "package": ("package", "parcel", "delivery"),
    "password": ("password", "login", "pin"),
    "account": ("account", "profile", "membership"),
    "car": ("rental car", "car", "ride"),
    "appointment": ("appointment", "doctor visit", "checkup"),
    "insurance": ("insurance", "policy", "coverage"),
    "subscription": ("subscription", "plan", "streaming plan"),
}

TEMPLATES = (
    "{please}{action} {det} {object} {time}",
    "i need to {action} {det} {object} {place}",
    "can you {action} {det} {object} {time}",
    "how do i {action} {det} {object}",
    "{action} {det} {object} for me {place}",
    "i would like to {action} {det} {object} {time}",
    "help me {action} {det} {object} {place}",
    "is it possible to {action} {det} {object} {time}",
    "i want to {action} {det} {object} asap",
    "could someone {action} {det} {object} {place} {time}",
)
DETERMINERS = ("my", "a", "the", "our", "this")
TIMES = ("", "today", "tomorrow", "tonight", "next week", "on friday", "this morning", "right now", "later")
PLACES = ("", "in paris", "near me", "from home", "at the airport", "in london", "online", "for the trip")
PLEASE = ("", "please ", "hey ", "hi there ")


def all_intents() -> list[str]:
    """The 144 intent names, ``"action/object"``, sorted."""
    return sorted(f"{a}/{o}" for a in ACTIONS for o in OBJECTS)


def generate_intents(names: list[str], per_class: int, seed: int) -> dict[str, list[str]]:
    """Writes ``per_class`` requests for each intent in ``names``.

    Each intent's sentences come from a generator seeded by the seed and the intent's place in
    :func:`all_intents`, so an intent reads the same whichever split it lands in.

    Args:
        names: Intent names from :func:`all_intents`.
        per_class: Sentences per intent.
        seed: Seed of the wording.

    Returns:
        ``{name: [sentence, ...]}``, sentences lower-case, single-spaced.
    """
    index = {name: i for i, name in enumerate(all_intents())}
    out = {}
    for name in names:
        action, obj = name.split("/")
        rng = np.random.default_rng([int(seed), index[name]])
        sentences = []
        for _ in range(per_class):
            text = TEMPLATES[rng.integers(len(TEMPLATES))].format(
                please=PLEASE[rng.integers(len(PLEASE))],
                action=ACTIONS[action][rng.integers(len(ACTIONS[action]))],
                det=DETERMINERS[rng.integers(len(DETERMINERS))],
                object=OBJECTS[obj][rng.integers(len(OBJECTS[obj]))],
                time=TIMES[rng.integers(len(TIMES))],
                place=PLACES[rng.integers(len(PLACES))],
            )
            sentences.append(" ".join(text.split()))
        out[name] = sentences
    return out
