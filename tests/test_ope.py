"""Cross-check of sepsisagent.ope against textbook loop implementations (one episode, one step, one resample at a time)."""
import numpy as np
import pytest

from sepsisagent.ope import evaluate_policy, wis, wpdis, wpdis_running_only, dr, wdr, ess


def random_inputs(seed, N=40, T=6, A=4):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, N)
    pi_b_all, pi_e_all = rng.dirichlet(np.ones(A), (N, T)), rng.dirichlet(np.ones(A), (N, T))
    actions = np.array([[rng.choice(A, p=pi_b_all[i, t]) for t in range(T)] for i in range(N)])
    take = lambda p: np.take_along_axis(p, actions[..., None], -1)[..., 0]
    rewards = rng.normal(0, 1, (N, T)) + 15 * (np.arange(T) == lengths[:, None] - 1) * rng.choice([-1, 1], (N, 1))
    rewards[np.arange(T) >= lengths[:, None]] = 0
    return dict(rewards=rewards, lengths=lengths, pi_b=take(pi_b_all), pi_e=take(pi_e_all),
                q_hat=rng.normal(0, 5, (N, T, A)), pi_e_all=pi_e_all, actions=actions)


def ref_weights(x, clip=None):
    "w[i][t] for t < H_i by an explicit running product, clipped at every step."
    out = []
    for i, H in enumerate(x['lengths']):
        prod, ws = 1.0, []
        for t in range(H):
            prod *= x['pi_e'][i, t] / x['pi_b'][i, t]
            ws.append(prod if clip is None else min(prod, clip))
        out.append(ws)
    return out


def ref_wis(x, gamma, clip=None):
    W = ref_weights(x, clip)
    num = den = 0.0
    for i, H in enumerate(x['lengths']):
        G = sum(gamma ** t * x['rewards'][i, t] for t in range(H))
        num += W[i][-1] * G; den += W[i][-1]
    return num / den


def ref_wpdis(x, gamma, clip=None, running_only=False):
    W, T, v = ref_weights(x, clip), x['rewards'].shape[1], 0.0
    for t in range(T):
        num = den = 0.0
        for i, H in enumerate(x['lengths']):
            if t < H: num += W[i][t] * x['rewards'][i, t]; den += W[i][t]
            elif not running_only: den += W[i][-1]             # absorbed: frozen weight, reward 0
        v += gamma ** t * (num / den if den > 0 else 0.0)
    return v


def ref_dr(x, gamma):
    "Jiang & Li's backward recursion, episode by episode."
    total = 0.0
    for i, H in enumerate(x['lengths']):
        v = 0.0
        for t in reversed(range(H)):
            a = x['actions'][i, t]
            q, p = x['q_hat'][i, t], x['pi_e_all'][i, t]
            v = p @ q + p[a] / x['pi_b'][i, t] * (x['rewards'][i, t] + gamma * v - q[a])
        total += v
    return total / len(x['lengths'])


def ref_wdr(x, gamma):
    W, T, v = ref_weights(x), x['rewards'].shape[1], 0.0
    for t in range(T):
        a_num = a_den = b_num = b_den = 0.0
        for i, H in enumerate(x['lengths']):
            w = W[i][min(t, H - 1)]
            w_prev = 1.0 if t == 0 else W[i][min(t - 1, H - 1)]
            a_den += w; b_den += w_prev
            if t < H:
                q, p, act = x['q_hat'][i, t], x['pi_e_all'][i, t], x['actions'][i, t]
                a_num += w * (x['rewards'][i, t] - q[act]); b_num += w_prev * (p @ q)
        v += gamma ** t * (a_num / a_den + b_num / b_den)
    return v


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('gamma', [0.99, 0.7, 1.0])
def test_estimators_match_loop_references(seed, gamma):
    x = random_inputs(seed)
    basic = (x['rewards'], x['lengths'], x['pi_b'], x['pi_e'])
    dr_args = (x['rewards'], x['lengths'], x['pi_b'], x['q_hat'], x['pi_e_all'], x['actions'])
    assert np.isclose(wis(*basic, gamma=gamma), ref_wis(x, gamma))
    assert np.isclose(wpdis(*basic, gamma=gamma), ref_wpdis(x, gamma))
    assert np.isclose(wpdis_running_only(*basic, gamma=gamma), ref_wpdis(x, gamma, running_only=True))
    assert np.isclose(dr(*dr_args, gamma=gamma), ref_dr(x, gamma))
    assert np.isclose(wdr(*dr_args, gamma=gamma), ref_wdr(x, gamma))
    r = evaluate_policy(**x, gamma=gamma, n_boot=0)
    assert np.isclose(r['wis'], ref_wis(x, gamma)) and np.isclose(r['dr'], ref_dr(x, gamma))
    W = [w[-1] for w in ref_weights(x)]
    assert np.isclose(r['ess'], ess(W)) and np.isclose(r['ess'], sum(W) ** 2 / sum(w * w for w in W))


@pytest.mark.parametrize('clip', [1.0, 3.0])
def test_clipping_matches_loop_reference(clip):
    x = random_inputs(11)
    basic = (x['rewards'], x['lengths'], x['pi_b'], x['pi_e'])
    assert np.isclose(wis(*basic, clip=clip), ref_wis(x, 0.99, clip))
    assert np.isclose(wpdis(*basic, clip=clip), ref_wpdis(x, 0.99, clip))


def test_bootstrap_is_resampling_episodes():
    "The interval equals percentiles of the estimator recomputed on explicitly resampled episodes (same random draws)."
    x, B, seed = random_inputs(3, N=30), 200, 5
    r = evaluate_policy(**x, n_boot=B, seed=seed)
    idx = np.random.default_rng(seed).integers(0, 30, (B, 30))        # what bootstrap_counts draws (one chunk)
    sub = lambda k: {key: v[k] for key, v in x.items()}
    for name, ref in [('wis', lambda y: ref_wis(y, 0.99)), ('wpdis', lambda y: ref_wpdis(y, 0.99)), ('dr', lambda y: ref_dr(y, 0.99))]:
        reps = [ref(sub(k)) for k in idx]
        assert np.allclose([r[f'{name}_lo'], r[f'{name}_hi']], np.percentile(reps, [2.5, 97.5])), name
