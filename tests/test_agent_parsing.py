"""Property tests of the agent's tool-call parsers: whatever a model writes, they never raise, return a ToolCall or a
ParseFailure of a known kind, and simulation candidates are always 1..3 level pairs within 0..4."""
import json

from hypothesis import given, settings, strategies as st, HealthCheck

from sepsisagent.agent import (Reply, ToolCall, ParseFailure, FAILURE_KINDS, TOOL_NAMES, parse_tool_call, parse_level,
                               parse_simulation_candidates, parse_prescription, tool_call_text)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

huge = st.one_of(st.integers(min_value=-10**400, max_value=10**400), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), huge, st.text(max_size=30),
                    st.sampled_from(["[1,2]", "[9, -3]", "[1e999, 2]", "[0.5,3.7]", "NaN", "Infinity", "-1", "4", "1" * 5000]))
json_like = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=10), kids, max_size=5)),
                         max_leaves=25)
arguments = st.one_of(json_like, st.fixed_dictionaries({'actions': json_like}),
                      st.fixed_dictionaries({'vasopressor': json_like, 'iv_fluid': json_like}),
                      st.fixed_dictionaries({'actions': st.lists(st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=8)}))


def _dumps(x) -> str:
    "JSON text of x (Python's json writes NaN/Infinity and huge ints, as a sloppy model might)."
    try: return json.dumps(x)
    except Exception: return str(x)


def _check_call(out):
    assert isinstance(out, (ToolCall, ParseFailure))
    if isinstance(out, ParseFailure): assert out.kind in FAILURE_KINDS
    else: assert out.name in TOOL_NAMES and isinstance(out.arguments, dict)


def _check_candidates(c):
    assert isinstance(c, list) and 1 <= len(c) <= 3
    for pair in c:
        assert isinstance(pair, list) and len(pair) == 2
        assert all(type(x) is int and 0 <= x <= 4 for x in pair)


@SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text(s):
    _check_call(parse_tool_call(Reply(text=s)))
    _check_call(parse_tool_call(Reply(text=f"<tool_call>{s}</tool_call>")))
    _check_call(parse_tool_call(Reply(text=f"think <tool_call>{s}")))


@SETTINGS
@given(st.one_of(st.text(max_size=20), json_like), arguments, st.integers(0, 40), st.booleans())
def test_broken_json_and_junk(name, args, cut, double):
    body = _dumps(dict(name=name, arguments=_dumps(args) if double else args))
    for text in (f"<tool_call>{body}</tool_call>", f"<tool_call>{body[:len(body) - cut]}", f"<tool_call>{body[cut:]}</tool_call>"):
        out = parse_tool_call(Reply(text=text))
        _check_call(out)
        if isinstance(out, ToolCall) and out.name == 'simulation': _check_candidates(parse_simulation_candidates(out.arguments))
        if isinstance(out, ToolCall) and out.name == 'prescription':
            p = parse_prescription(out.arguments)
            assert isinstance(p, ParseFailure) or (len(p) == 2 and all(type(x) is int and 0 <= x <= 4 for x in p))


@SETTINGS
@given(st.one_of(json_like, st.lists(json_like, max_size=3)))
def test_parsed_tool_calls_of_any_shape(tcs):
    _check_call(parse_tool_call(Reply(text='', tool_calls=tcs if isinstance(tcs, list) else [tcs])))
    _check_call(parse_tool_call(Reply(text='', tool_calls=[{'id': 'x', 'type': 'function', 'function': {'name': 'simulation', 'arguments': _dumps(tcs)}}])))


@SETTINGS
@given(arguments)
def test_candidates_always_valid(args):
    _check_candidates(parse_simulation_candidates(args))


@SETTINGS
@given(arguments)
def test_prescription_levels_or_failure(args):
    p = parse_prescription(args)
    if isinstance(p, ParseFailure): assert p.kind == 'bad_arguments'
    else: assert len(p) == 2 and all(type(x) is int and 0 <= x <= 4 for x in p)


@SETTINGS
@given(huge)
def test_levels_clamped(x):
    v = parse_level(x)
    assert v is None or (type(v) is int and 0 <= v <= 4)
    assert parse_level(str(x)[:64]) in (None, 0, 1, 2, 3, 4)


@SETTINGS
@given(st.integers(-10, 10), st.integers(-10, 10), st.integers(-10, 10), st.integers(-10, 10))
def test_well_formed_calls_round_trip(v, f, v2, f2):
    clamp = lambda x: min(max(x, 0), 4)
    two = tool_call_text('prescription', vasopressor=v, iv_fluid=f) + tool_call_text('simulation', actions=[f"[{v2},{f2}]"])
    out = parse_tool_call(Reply(text=two))                 # only the first call of a reply counts
    assert out == ToolCall('prescription', {'vasopressor': v, 'iv_fluid': f})
    assert parse_prescription(out.arguments) == (clamp(v), clamp(f))
    sim = parse_tool_call(Reply(text=tool_call_text('simulation', actions=[f"[{v},{f}]", [v2, f2], "junk", "[1,1]", "[2,2]"])))
    assert parse_simulation_candidates(sim.arguments) == [[clamp(v), clamp(f)], [clamp(v2), clamp(f2)], [1, 1]]


def test_deeply_nested():
    deep = '[' * 100000 + ']' * 100000
    _check_call(parse_tool_call(Reply(text=f"<tool_call>{deep}</tool_call>")))
    _check_call(parse_tool_call(Reply(text='<tool_call>{"name": "simulation", "arguments": {"actions": ' + deep + '}}</tool_call>')))
    _check_candidates(parse_simulation_candidates({'actions': json.loads('[' * 500 + ']' * 500)}))
    assert parse_tool_call(Reply(text='<tool_call>{"name": "prescription", "arguments": {"vasopressor": ' + '9' * 5000 + ', "iv_fluid": 1}}</tool_call>')).kind == 'bad_json'
