"""Long-context retrieval sequences for the tiny LM (vocabulary 128).

Three kinds, each a token sequence of exactly `length` tokens ending in
queries `QUERY key value`; the model must predict each query's value at the
position of its key:
- kv:     records `SEP key value` with distinct keys scattered in filler text;
- needle: one record `NEEDLE key value` hidden at a random depth of filler;
- recall: associative recall, the whole context is `key value` pairs drawn
          from a fixed per-sequence mapping (keys repeat; every repeat is a
          supervised recall during training);
- copy:   (training only) a random segment of distinct tokens repeated to
          fill the sequence; every token of the repeats is supervised. Its
          dense signal makes the copy ("induction") circuit that all three
          retrieval kinds need form in hundreds of steps instead of thousands.
Target: {'kind', 'positions' (query key positions), 'answers', 'train_positions',
'train_answers'}; logits[0, p] should put its maximum on the answer.
"""
from __future__ import annotations

import numpy as np

from edgekit.data import Sample, register_task
from edgekit.errors import EdgekitError

VOCAB = 128
PAD, BOS, QUERY, NEEDLE, SEP = 0, 1, 2, 3, 4
FILLER = np.arange(5, 32)
KEYS = np.arange(32, 96)
VALUES = np.arange(96, 128)
KINDS = ("kv", "needle", "recall")  # evaluated kinds; "copy" is for training only
DEFAULT_LENGTH = 1024


def _queries(rng, keys, mapping, count):
    """Tokens of `count` queries about `keys`, with the answer position offsets."""
    chosen = rng.choice(keys, size=count, replace=len(keys) < count)
    tokens = np.stack([np.full(count, QUERY), chosen, mapping[chosen]], axis=1).reshape(-1)
    return tokens, np.arange(count) * 3 + 1, mapping[chosen]


def _sequence_kv(rng, length, n_queries):
    # short (curriculum) sequences hold fewer records; from ~128 tokens on, 4-32
    n_pairs = int(rng.integers(4, min(33, (length - 1 - 3 * n_queries) // 3 + 1)))
    keys = rng.choice(KEYS, size=n_pairs, replace=False)
    mapping = np.zeros(VOCAB, np.int64)
    mapping[keys] = rng.choice(VALUES, size=n_pairs)
    q_tokens, q_off, answers = _queries(rng, keys, mapping, n_queries)
    body_len = length - 1 - len(q_tokens)
    body = rng.choice(FILLER, size=body_len)
    slots = np.sort(rng.choice(body_len // 3, size=n_pairs, replace=False)) * 3
    order = rng.permutation(n_pairs)
    for slot, i in zip(slots, order):
        body[slot:slot + 3] = (SEP, keys[i], mapping[keys[i]])
    return body, q_tokens, q_off, answers, None


def _sequence_needle(rng, length, n_queries):
    key = rng.choice(KEYS)
    mapping = np.zeros(VOCAB, np.int64)
    mapping[key] = rng.choice(VALUES)
    q_tokens, q_off, answers = _queries(rng, np.array([key]), mapping, 1)
    body_len = length - 1 - len(q_tokens)
    body = rng.choice(FILLER, size=body_len)
    at = int(rng.integers(0, body_len - 3))
    body[at:at + 3] = (NEEDLE, key, mapping[key])
    return body, q_tokens, q_off, answers, None


def _sequence_recall(rng, length, n_queries):
    n_keys = int(rng.integers(8, len(KEYS) + 1))
    keys = rng.choice(KEYS, size=n_keys, replace=False)
    mapping = np.zeros(VOCAB, np.int64)
    mapping[keys] = rng.choice(VALUES, size=n_keys)
    body_len = length - 1 - 3 * n_queries
    n_pairs = body_len // 2
    stream = rng.choice(keys, size=n_pairs)
    body = np.stack([stream, mapping[stream]], axis=1).reshape(-1)
    if len(body) < body_len:
        body = np.concatenate([body, rng.choice(FILLER, size=body_len - len(body))])
    seen = np.unique(stream)
    q_tokens, q_off, answers = _queries(rng, seen, mapping, n_queries)
    # every key's second and later occurrence is a recall the model can learn from
    first = np.zeros(n_pairs, bool)
    _, first_idx = np.unique(stream, return_index=True)
    first[first_idx] = True
    repeat_pos = 1 + np.nonzero(~first)[0] * 2  # position of the key token, +1 for BOS
    return body, q_tokens, q_off, answers, (repeat_pos, mapping[stream[~first]])


def _sequence_copy(rng, length, n_queries):
    body_len = length - 1
    tokens = np.arange(FILLER[0], VOCAB)  # every non-special token
    period = int(rng.integers(8, min(len(tokens), body_len // 2) + 1))
    segment = rng.choice(tokens, size=period, replace=False)
    body = np.resize(segment, body_len)
    # logits at token position p (body index p - 1) predict body[p]; from body index
    # period + 1 on, the current token's previous occurrence says what comes next
    train_pos = np.arange(period + 1, body_len)
    last = train_pos[-n_queries:]
    # offsets are relative to the end of the body (where queries would start)
    return body, np.zeros(0, np.int64), last - 1 - body_len, body[last], \
        (train_pos[:-n_queries], body[train_pos[:-n_queries]])


_BUILDERS = {"copy": _sequence_copy, "kv": _sequence_kv, "needle": _sequence_needle, "recall": _sequence_recall}


@register_task("lm")
def lm_sample(rng: np.random.Generator, spec: dict, split: str = "test", length: int | None = None,
              kind: str | None = None, queries: int = 8) -> Sample:
    if length is None:
        shape = spec.get("tokens", (1, DEFAULT_LENGTH))
        length = shape[-1] if isinstance(shape[-1], int) and shape[-1] > 0 else DEFAULT_LENGTH
    length = int(length)
    if length < 64:
        raise EdgekitError(f"LM sequence length must be >= 64 tokens, got {length}")
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in _BUILDERS:
        raise EdgekitError(f"unknown LM task kind {kind!r}: expected one of {', '.join(_BUILDERS)}")
    body, q_tokens, q_off, answers, extra = _BUILDERS[kind](rng, length, queries)
    tokens = np.concatenate([[BOS], body, q_tokens]).astype(np.int64)
    assert len(tokens) == length, (len(tokens), length)
    positions = 1 + len(body) + q_off
    train_pos, train_ans = positions, answers
    if extra is not None:
        train_pos = np.concatenate([extra[0], positions])
        train_ans = np.concatenate([extra[1], answers])
    target = {"kind": kind, "positions": positions.astype(np.int64), "answers": answers.astype(np.int64),
              "train_positions": train_pos.astype(np.int64), "train_answers": train_ans.astype(np.int64)}
    return Sample({"tokens": tokens[None]}, target, {"kind": kind, "length": length})
