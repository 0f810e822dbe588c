"""The store's JSON spelling helpers: exponent-form numbers and NUL characters.

``plain_decimals`` skips texts without an exponent-form number outright; these tests hold it to
what the full rewrite gives on texts with and without such numbers, in strings and out of them.
"""

from __future__ import annotations

import json
import random

import pytest

from rollout.store._sql import dump_json
from rollout.store.postgres import _JSON_STRING_OR_EXPONENT, _plain_decimal, plain_decimals


def _full_rewrite(text: str) -> str:
    return _JSON_STRING_OR_EXPONENT.sub(_plain_decimal, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a":1e+16}', '{"a":10000000000000000.0}'),
        ('{"a":[1.5e-05,2]}', '{"a":[0.000015,2]}'),
        ('{"a":"1e+16","b":1E5}', '{"a":"1e+16","b":100000.0}'),
        ('{"time-out":"one-sided e-value","n":3}', '{"time-out":"one-sided e-value","n":3}'),
        ('{"a":"x\\"1e5\\"","b":0.5}', '{"a":"x\\"1e5\\"","b":0.5}'),
        ("{}", "{}"),
    ],
)
def test_plain_decimals_rewrites_exponents_outside_strings_only(text: str, expected: str) -> None:
    assert plain_decimals(text) == expected
    assert json.loads(plain_decimals(text)) == json.loads(text)


def test_plain_decimals_is_the_full_rewrite_on_random_json() -> None:
    rng = random.Random(7)
    words = ["e-", "1e-5", "3E+7", "time-out", "x", "\\", '"', "é", "e+", "9e", "٣e٣"]
    numbers = [1e16, 1e-5, 1.5e300, 0.1, 3.0, -2e-7, 1e15, 0.0001, 5e-324]
    for _ in range(3000):
        value: dict[str, object] = {}
        for index in range(rng.randint(0, 6)):
            key = rng.choice(words) + str(index)
            pick = rng.random()
            if pick < 0.4:
                value[key] = rng.choice(numbers)
            elif pick < 0.8:
                value[key] = "".join(rng.choice(words) for _ in range(3))
            else:
                value[key] = [rng.random() * 10 ** rng.randint(-8, 20), rng.randint(-99, 99)]
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5, separators=(",", ":"))
        assert plain_decimals(text) == _full_rewrite(text), text


def test_dump_json_refuses_nul_but_not_its_spelling() -> None:
    with pytest.raises(ValueError, match="NUL"):
        dump_json({"a": "x\x00y"}, "state")
    assert dump_json({"a": "\\u0000"}, "state") == '{"a":"\\\\u0000"}'
