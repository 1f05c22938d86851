"""Property tests of the agent's tool-call parsers: whatever a model writes, they never raise, return a ToolCall or a
ParseFailure of a known kind, and simulation candidates are always 1..3 level pairs within 0..4. A number that
is not an integer level 0..4 never becomes a prescription or a candidate (it is a ParseFailure), unless the
release's clamping is asked for by name (`clamp=True`)."""
import json
import math

from hypothesis import given, settings, strategies as st, HealthCheck

from sepsisagent.agent import (Reply, ToolCall, ParseFailure, FAILURE_KINDS, TOOL_NAMES, parse_tool_call, parse_level,
                               parse_simulation_candidates, parse_prescription, tool_call_text, level_number)

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
    if isinstance(c, ParseFailure):
        assert c.kind == 'out_of_range'
        return
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
    if isinstance(p, ParseFailure): assert p.kind in ('bad_arguments', 'out_of_range')
    else: assert len(p) == 2 and all(type(x) is int and 0 <= x <= 4 for x in p)


@SETTINGS
@given(huge)
def test_levels_valid_or_failure(x):
    for y in (x, str(x)[:64]):
        v = parse_level(y)
        assert isinstance(v, ParseFailure) or (type(v) is int and 0 <= v <= 4 and v == level_number(y))


# numbers that are not levels: beyond 0..4 (far past float range too), non-integral, infinite; numeric strings
_ints_out = st.one_of(st.integers(max_value=-1), st.integers(min_value=5), st.integers(-10**400, -1),
                      st.integers(5, 10**400))
_is_level = lambda x: math.isfinite(x) and x.is_integer() and 0 <= x <= 4
_floats_out = st.floats(allow_nan=False).filter(lambda x: not _is_level(x))
_edges = [1e308, -1e308, 2.4, 4.5, -0.5, 1e-300, float('inf'), -float('inf')]
out_of_range = st.one_of(_ints_out, _floats_out, st.sampled_from(_edges))
not_levels = st.one_of(out_of_range, out_of_range.map(str), out_of_range.map(lambda x: f" {x!r} "),
                       st.just(float('nan')),
                       st.sampled_from(['nan', 'NaN', 'inf', '-Infinity', '1e999', '-1e999', '2.5', '5', '-1',
                                        '4.000001']))
levels = st.integers(0, 4)


@SETTINGS
@given(not_levels, levels, st.booleans())
def test_no_prescription_from_a_number_out_of_range(x, ok, first):
    assert isinstance(parse_level(x), ParseFailure)
    args = dict(vasopressor=x, iv_fluid=ok) if first else dict(vasopressor=ok, iv_fluid=x)
    for a in (args, json.loads(json.dumps(args))):          # as given, and as a model's JSON text decodes
        p = parse_prescription(a)
        assert isinstance(p, ParseFailure), (a, p)
        assert p.kind == ('out_of_range' if level_number(x) is not None else 'bad_arguments')
    body = _dumps(dict(name='prescription', arguments=args))
    call = parse_tool_call(Reply(text=f'<tool_call>{body}</tool_call>'))
    assert not isinstance(call, ToolCall) or isinstance(parse_prescription(call.arguments), ParseFailure)


@SETTINGS
@given(not_levels, levels, st.booleans(), st.sampled_from(['string', 'list', 'dict']))
def test_no_candidate_from_a_number_out_of_range(x, ok, first, form):
    pair = [x, ok] if first else [ok, x]
    as_dict = dict(vasopressor=pair[0], iv_fluid=pair[1])
    cand = dict(string=f"[{pair[0]},{pair[1]}]", list=pair, dict=as_dict)[form]
    c = parse_simulation_candidates({'actions': ["[1,1]", cand, [2, 3]]})
    numeric = len(regex_numbers(cand)) == 2 if form == 'string' else level_number(x) is not None
    if numeric:
        assert isinstance(c, ParseFailure) and c.kind == 'out_of_range', (cand, c)   # the whole call: invalid
    else: assert c == [[1, 1], [2, 3]], (cand, c)                                     # no number: junk
    alone = parse_simulation_candidates({'actions': [cand]})
    assert isinstance(alone, ParseFailure) or alone == [[0, 0]]                       # never a pair from x


def regex_numbers(s: str) -> list:
    from sepsisagent.agent import _NUM
    return _NUM.findall(s)


finite_numbers = st.one_of(st.integers(-10**400, 10**400), st.floats(allow_nan=False, allow_infinity=False))


@SETTINGS
@given(finite_numbers, levels, st.booleans())
def test_clamp_option_still_clamps(x, ok, as_string):
    y = repr(x) if as_string else x
    want = int(min(max(round(x), 0), 4))
    assert parse_level(y, clamp=True) == want
    assert parse_prescription(dict(vasopressor=y, iv_fluid=ok), clamp=True) == (want, ok)
    both = parse_simulation_candidates({'actions': [[y, ok], [ok, y]]}, clamp=True)
    assert both == [[want, ok], [ok, want]]
    assert parse_simulation_candidates({'actions': [y, ok]}, clamp=True) == [[want, ok]]   # one bare pair


@SETTINGS
@given(st.integers(-10, 10), st.integers(-10, 10), st.integers(-10, 10), st.integers(-10, 10))
def test_well_formed_calls_round_trip(v, f, v2, f2):
    clamp = lambda x: min(max(x, 0), 4)
    valid = lambda *xs: all(0 <= x <= 4 for x in xs)
    two = tool_call_text('prescription', vasopressor=v, iv_fluid=f) + tool_call_text('simulation', actions=[f"[{v2},{f2}]"])
    out = parse_tool_call(Reply(text=two))                 # only the first call of a reply counts
    assert out == ToolCall('prescription', {'vasopressor': v, 'iv_fluid': f})
    p = parse_prescription(out.arguments)
    assert p == (v, f) if valid(v, f) else p.kind == 'out_of_range'
    assert parse_prescription(out.arguments, clamp=True) == (clamp(v), clamp(f))
    sim = parse_tool_call(Reply(text=tool_call_text('simulation', actions=[f"[{v},{f}]", [v2, f2], "junk", "[1,1]", "[2,2]"])))
    c = parse_simulation_candidates(sim.arguments)
    assert c == [[v, f], [v2, f2], [1, 1]] if valid(v, f, v2, f2) else c.kind == 'out_of_range'
    clamped = parse_simulation_candidates(sim.arguments, clamp=True)
    assert clamped == [[clamp(v), clamp(f)], [clamp(v2), clamp(f2)], [1, 1]]


def test_deeply_nested():
    deep = '[' * 100000 + ']' * 100000
    _check_call(parse_tool_call(Reply(text=f"<tool_call>{deep}</tool_call>")))
    _check_call(parse_tool_call(Reply(text='<tool_call>{"name": "simulation", "arguments": {"actions": ' + deep + '}}</tool_call>')))
    _check_candidates(parse_simulation_candidates({'actions': json.loads('[' * 500 + ']' * 500)}))
    assert parse_tool_call(Reply(text='<tool_call>{"name": "prescription", "arguments": {"vasopressor": ' + '9' * 5000 + ', "iv_fluid": 1}}</tool_call>')).kind == 'bad_json'
