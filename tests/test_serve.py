"""The OpenAI-compatible server (`sepsisagent.serve`) against bad clients: malformed bodies, unknown models,
bodies too large or too slow, many clients at once. Every refusal must be a 4xx with OpenAI's error body,
never a 500 or a hang."""
import json, socket, threading, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from sepsisagent.agent import Reply, ScriptedBackend, tool_call_text
from sepsisagent.prompts import TOOLS
from sepsisagent.serve import make_server, start_server

MAX_BODY, READ_TIMEOUT = 4096, 0.5
OK = dict(model='echo', messages=[dict(role='user', content='hello')])


def _echo(conv, ctx):
    "Echoes the last message; a few words make the backend fail the way real ones do."
    text = conv[-1].get('content') or ''
    if text == 'too long': return Reply('', finish_reason='error', error='context')
    if text == 'oom': return Reply('', finish_reason='error', error='OutOfMemoryError')
    if text == 'odd order': return Reply('', finish_reason='error', error='TemplateError')
    if text == 'call': return 'Checking.\n' + tool_call_text('prescription', vasopressor=1, iv_fluid=0)
    return 'echo: ' + text


@pytest.fixture(scope='module')
def server():
    srv = make_server(ScriptedBackend(_echo), model='echo', max_body=MAX_BODY, read_timeout=READ_TIMEOUT)
    srv.start()
    yield srv
    srv.stop()


def request(url: str, path: str, body=None, method: str = 'POST', ctype: str = 'application/json') -> tuple:
    "(status, decoded JSON answer) of one request; `body` is sent as JSON unless it is bytes."
    data = body if isinstance(body, bytes) else None if method == 'GET' else json.dumps(body).encode()
    req = urllib.request.Request(url.removesuffix('/v1') + path, data=data, method=method,
                                 headers={'Content-Type': ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())


def chat(url: str, body, **kw) -> tuple: return request(url, '/v1/chat/completions', body, **kw)


def exchange(url: str, data: bytes, timeout: float = 10) -> tuple:
    "(seconds until the server closed the connection, bytes it sent) after writing raw `data`."
    host, port = url.split('//')[1].split('/')[0].rsplit(':', 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        t0, out = time.monotonic(), b''
        s.sendall(data)
        while chunk := s.recv(65536): out += chunk
    return time.monotonic() - t0, out


def assert_openai_error(ans: dict, param=None):
    assert set(ans) == {'error'} and set(ans['error']) == {'message', 'type', 'param', 'code'}, ans
    assert ans['error']['message'] and ans['error']['param'] == param, ans


def with_(**kw) -> dict: return {**OK, **kw}


def user(content) -> dict: return with_(messages=[dict(role='user', content=content)])


MALFORMED = {                                   # body -> the param OpenAI would name (None: the whole body)
    'json array': ([OK], None), 'json null': (None, None), 'json string': ('hello', None),
    'json number': (3, None), 'invalid json': (b'{"messages": [', None),
    'truncated json': (b'{"model": "echo", "messages": [{"role"', None), 'not utf-8': (b'\xff\xfe{}', None),
    'empty object': ({}, 'messages'), 'empty body': (b'', None),
    'temperature "hot"': (with_(temperature='hot'), 'temperature'),
    'temperature as string number': (with_(temperature='0.5'), 'temperature'),
    'temperature bool': (with_(temperature=True), 'temperature'),
    'temperature 3': (with_(temperature=3), 'temperature'),
    'max_tokens -1': (with_(max_tokens=-1), 'max_tokens'),
    'max_tokens 0': (with_(max_tokens=0), 'max_tokens'),
    'max_tokens float': (with_(max_tokens=1.5), 'max_tokens'),
    'max_completion_tokens string': (with_(max_completion_tokens='10'), 'max_completion_tokens'),
    'top_p 0': (with_(top_p=0), 'top_p'), 'seed string': (with_(seed='1'), 'seed'), 'n 2': (with_(n=2), 'n'),
    'stream string': (with_(stream='yes'), 'stream'), 'model number': (with_(model=3), 'model'),
    'messages missing': ({'model': 'echo'}, 'messages'), 'messages empty': (with_(messages=[]), 'messages'),
    'messages a string': (with_(messages='hello'), 'messages'),
    'messages an object': (with_(messages={}), 'messages'),
    'message not an object': (with_(messages=['hello']), 'messages[0]'),
    'message without role': (with_(messages=[dict(content='hi')]), 'messages[0].role'),
    'unknown role': (with_(messages=[dict(role='narrator', content='hi')]), 'messages[0].role'),
    'second message without role': (with_(messages=[dict(role='user', content='a'), dict(content='b')]),
                                     'messages[1].role'),
    'content a number': (user(5), 'messages[0].content'),
    'content an object': (user({'text': 'x'}), 'messages[0].content'),
    'image part': (user([dict(type='image_url', image_url=dict(url='x'))]), 'messages[0].content'),
    'text part without text': (user([dict(type='text')]), 'messages[0].content'),
    'user message without content': (with_(messages=[dict(role='user')]), 'messages[0]'),
    'assistant without content or calls': (
        with_(messages=[dict(role='user', content='a'), dict(role='assistant')]), 'messages[1]'),
    'tool call without function': (with_(messages=[dict(role='assistant', tool_calls=[dict(id='c')])]),
                                   'messages[0].tool_calls[0].function'),
    'tools not a list': (with_(tools='all'), 'tools'),
    'tool without function': (with_(tools=[dict(type='function')]), 'tools[0].function'),
    'tool of another type': (with_(tools=[dict(type='retrieval', function=dict(name='x'))]), 'tools[0].type'),
}


@pytest.mark.parametrize('body,param', MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_400_with_openai_error(server, body, param):
    status, ans = chat(server.url, body)
    assert status == 400, (status, ans)
    assert_openai_error(ans, param)


def test_body_not_sent_as_json_is_400(server):
    status, ans = chat(server.url, json.dumps(OK).encode(), ctype='text/plain')
    assert status == 400 and 'application/json' in ans['error']['message']
    assert_openai_error(ans)


def test_an_assistant_tool_call_without_content_is_accepted(server):
    call = dict(id='c1', type='function', function=dict(name='simulation', arguments='{"actions": ["[0]"]}'))
    messages = [dict(role='user', content='a'), dict(role='assistant', content=None, tool_calls=[call]),
                dict(role='tool', tool_call_id='c1', content='MAP 70')]
    status, ans = chat(server.url, with_(messages=messages))
    assert status == 200 and ans['choices'][0]['message']['content'] == 'echo: MAP 70'


def test_content_parts_are_joined_to_text(server):
    parts = [dict(type='text', text='a'), dict(type='text', text='b')]
    body = with_(messages=[dict(role='system', content=parts), dict(role='user', content=parts)])
    status, ans = chat(server.url, body)
    assert status == 200 and ans['choices'][0]['message']['content'] == 'echo: a\nb'


def test_openai_fields_it_does_not_read_are_accepted(server):
    messages = [dict(role='developer', content='Be brief.'), dict(role='user', content='hi', name='doctor')]
    body = with_(top_k=20, logprobs=False, user='u1', frequency_penalty=0, stream=False, n=1, seed=3,
                 temperature=0, max_completion_tokens=8, messages=messages)
    status, ans = chat(server.url, body)
    assert status == 200 and ans['object'] == 'chat.completion' and ans['model'] == 'echo'


def test_unknown_model_is_404_and_the_served_one_is_listed(server):
    status, ans = chat(server.url, with_(model='gpt-4o'))
    assert status == 404 and ans['error']['code'] == 'model_not_found'
    assert_openai_error(ans, 'model')
    status, listing = request(server.url, '/v1/models', method='GET')
    assert status == 200 and [m['id'] for m in listing['data']] == ['echo']
    assert request(server.url, '/v1/models/echo', method='GET')[0] == 200
    status, ans = request(server.url, '/v1/models/gpt-4o', method='GET')
    assert status == 404
    assert_openai_error(ans, 'model')
    assert chat(server.url, {'messages': OK['messages']})[0] == 200        # no model: the served one


def test_unknown_route_and_wrong_method_have_openai_errors(server):
    status, ans = request(server.url, '/v1/completions', OK)
    assert status == 404
    assert_openai_error(ans)
    status, ans = request(server.url, '/v1/chat/completions', method='GET')
    assert status == 405
    assert_openai_error(ans)


NAMED = dict(type='function', function=dict(name='prescription'))


@pytest.mark.parametrize('choice', ['required', 'none', NAMED])
def test_tool_choice_other_than_auto_is_refused_clearly(server, choice):
    status, ans = chat(server.url, with_(tools=TOOLS, tool_choice=choice))
    message = ans['error']['message']
    assert status == 400 and 'not supported yet' in message and 'auto' in message
    assert_openai_error(ans, 'tool_choice')


def test_tool_choice_auto_or_absent_is_served_and_calls_are_parsed(server):
    for body in (with_(tools=TOOLS, tool_choice='auto'), with_(tools=TOOLS)):
        assert chat(server.url, body)[0] == 200
    status, ans = chat(server.url, with_(tools=TOOLS, messages=[dict(role='user', content='call')]))
    choice = ans['choices'][0]
    assert status == 200 and choice['finish_reason'] == 'tool_calls'
    assert choice['message']['content'] == 'Checking.'
    call = choice['message']['tool_calls'][0]['function']
    assert call == dict(name='prescription', arguments='{"vasopressor": 1, "iv_fluid": 0}')


def test_streaming_is_refused_clearly(server):
    status, ans = chat(server.url, with_(stream=True))
    assert status == 400 and 'stream' in ans['error']['message']
    assert_openai_error(ans, 'stream')


def test_generation_errors_client_400_server_500(server):
    status, ans = chat(server.url, with_(messages=[dict(role='user', content='too long')]))
    assert status == 400 and ans['error']['code'] == 'context_length_exceeded'
    status, ans = chat(server.url, with_(messages=[dict(role='user', content='odd order')]))
    assert status == 400 and ans['error']['code'] == 'invalid_messages'
    status, ans = chat(server.url, with_(messages=[dict(role='user', content='oom')]))
    assert status == 500 and ans['error']['type'] == 'server_error'


HEAD = 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{}\r\n'


def test_413_from_content_length_before_reading_the_body(server):
    secs, out = exchange(server.url, HEAD.format('Content-Length: 1000000000\r\n').encode())   # and no body
    assert out.startswith(b'HTTP/1.1 413') and b'connection: close' in out.lower() and secs < 2
    body = json.loads(out.split(b'\r\n\r\n', 1)[1])
    assert_openai_error(body)
    assert chat(server.url, b'x' * (MAX_BODY + 1))[0] == 413
    assert chat(server.url, with_(messages=[dict(role='user', content='x' * (MAX_BODY // 2))]))[0] == 200


def test_413_for_a_chunked_body_past_the_limit(server):
    chunk = b'%x\r\n%s\r\n' % (3000, b'x' * 3000)
    head = HEAD.format('Transfer-Encoding: chunked\r\n').encode()
    secs, out = exchange(server.url, head + chunk * 2 + b'0\r\n\r\n')
    assert out.startswith(b'HTTP/1.1 413')


def test_a_body_shorter_than_its_content_length_times_out(server):
    secs, out = exchange(server.url, HEAD.format('Content-Length: 100\r\n').encode() + b'{"messages": [')
    assert out.startswith(b'HTTP/1.1 408') and READ_TIMEOUT * 0.8 < secs < READ_TIMEOUT + 5, (secs, out[:120])
    assert_openai_error(json.loads(out.split(b'\r\n\r\n', 1)[1]))
    assert chat(server.url, OK)[0] == 200                                  # the server goes on serving


def test_a_client_that_vanishes_mid_body_leaves_the_server_serving(server):
    host, port = server.url.split('//')[1].split('/')[0].rsplit(':', 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(HEAD.format('Content-Length: 100\r\n').encode() + b'{"mess')
    assert chat(server.url, OK)[0] == 200


def test_64_concurrent_requests_all_answered():
    barrier = threading.Barrier(64, timeout=10)        # passes only when all 64 generate at the same time

    def together(conv, ctx):
        barrier.wait()
        return 'ok'

    url, stop = start_server(ScriptedBackend(together), model='together')
    try:
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(lambda i: chat(url, dict(messages=[dict(role='user', content=str(i))])),
                                    range(64)))
    finally: stop()
    assert [status for status, _ in results] == [200] * 64
    assert all(ans['choices'][0]['message']['content'] == 'ok' for _, ans in results)


def test_loopback_by_default():
    srv = make_server(ScriptedBackend(_echo))
    try: assert srv.sock.getsockname()[0] == '127.0.0.1' and srv.url.startswith('http://127.0.0.1:')
    finally: srv.sock.close()


def test_stop_releases_the_port():
    srv = make_server(ScriptedBackend(_echo), model='echo').start()
    port = srv.sock.getsockname()[1]
    assert chat(srv.url, OK)[0] == 200
    srv.stop()
    with socket.socket() as s:
        assert s.connect_ex(('127.0.0.1', port)) != 0
