"""Curriculum stages I and II (sepsisagent.sft, sepsisagent.bc) on the quick profile: example builders, answer-only label
masks, a few training steps lower the loss, checkpoints reload and generate, the LoRA path saves a merged model, the
stage-II prompts equal the inference prompts token for token, and bad inputs fail clearly."""
import json
import shutil

import numpy as np
import pytest

from sepsisagent.sft import (TASKS, FORECAST_FEATURES, base_model_path, curriculum_knobs, dynamics_examples, forecast_answer,
                             parse_forecast, sft_trainer, stage1_examples, to_dataset, train_sft, yes_probability, generate_greedy,
                             outcome_prompts, forecast_mae, stage_dir, prompt_lengths)
from sepsisagent.tinylm import load_or_build_tiny_model, load_tiny
from sepsisagent.episodes import load_or_build_episodes
from sepsisagent.core import get_profile
from sepsisagent.baselines import logged_states

PROFILE = 'quick'


@pytest.fixture(scope='module')
def ep():
    return load_or_build_episodes(PROFILE)


@pytest.fixture(scope='module')
def tiny():
    return load_or_build_tiny_model(PROFILE)


@pytest.fixture(scope='module')
def small(ep):
    "16 stage-I examples: 8 forecasts, 4 IHM, 4 VR."
    return to_dataset(stage1_examples(ep, dict(curriculum_knobs(PROFILE), s1_n_forecast=8, s1_n_ihm=4, s1_n_vr=4), seed=11))


@pytest.fixture(scope='module')
def trained(tiny, small, tmp_path_factory):
    "5 full fine-tuning updates on the 16 examples."
    out = tmp_path_factory.mktemp('sft')
    return out, train_sft(tiny, small, out, max_steps=5, batch=1, grad_accum=4, lr=3e-3, seed=0)


def test_stage1_examples_well_formed(ep):
    b = logged_states(ep, 'train')
    for task in TASKS:
        ex = dynamics_examples(ep, 'train', task, 12, seed=4, batch=b)
        assert len(ex) == 12
        for x in ex:
            assert [m['role'] for m in x['prompt']] == ['system', 'user'] and [m['role'] for m in x['completion']] == ['assistant']
            assert all(m['content'].strip() for m in x['prompt'])
            a = x['completion'][0]['content']
            assert a.strip()
            if task == 'forecast':
                assert parse_forecast(a) is not None and a.startswith('Option 1 [')
            else:
                assert a in ('yes', 'no') and a == ('yes' if x['label'] else 'no')
    mix = stage1_examples(ep, dict(curriculum_knobs(PROFILE), s1_n_forecast=5, s1_n_ihm=3, s1_n_vr=2), seed=0)
    assert sorted(x['task'] for x in mix) == ['forecast'] * 5 + ['ihm'] * 3 + ['vr'] * 2


def test_forecast_roundtrip_and_unparseable():
    raw = np.linspace(1, 300, 39)
    for style in ('compact', 'paper'):
        got = parse_forecast(forecast_answer([1, 2], raw, style), style)
        from sepsisagent.synthicu import FEATURES
        assert set(got) == set(FORECAST_FEATURES)
        assert all(abs(got[f] - raw[FEATURES.index(f)]) <= 0.051 for f in FORECAST_FEATURES)
    assert parse_forecast("Option 1 [1,2]:\nVitals: HR bpm 80.0, SBP mmHg") is None
    assert parse_forecast("") is None and parse_forecast(None) is None


def test_answer_only_label_masks(tiny, small, tmp_path):
    tr, tok = sft_trainer(tiny, small, tmp_path)
    ds = tr.train_dataset
    plen = prompt_lengths(ds)
    rows = [ds[i] for i in range(4)]
    batch = tr.data_collator([{k: r[k] for k in ('input_ids', 'labels')} for r in rows])
    assert batch['input_ids'].shape[1] > min(len(r['input_ids']) for r in rows)      # padding present
    for i, r in enumerate(rows):
        n, lbl = len(r['input_ids']), batch['labels'][i]
        assert (lbl[:plen[i]] == -100).all() and (lbl[n:] == -100).all()
        assert (lbl[plen[i]:n] == batch['input_ids'][i, plen[i]:n]).all() and plen[i] < n
        assert tok.decode(r['input_ids'][plen[i]:]) == r['completion'][0]['content'] + tok.eos_token + '\n'
        want = tok.apply_chat_template(r['prompt'], add_generation_prompt=True, tokenize=False)
        assert tok.decode(r['input_ids'][:plen[i]]) == want


def test_few_steps_lower_the_loss(trained):
    out, log = trained
    assert log['steps'] == 5 and len(log['losses']) >= 5
    assert log['probe_loss_after'] < log['probe_loss_before']
    assert (out / 'training_log.json').is_file() and json.loads((out / 'training_log.json').read_text())['steps'] == 5


def test_checkpoint_reloads_and_generates(trained, small):
    out, _ = trained
    tok, model = load_tiny(out)
    text = generate_greedy(tok, model, [small[0]['prompt']], max_new_tokens=8)[0]
    assert isinstance(text, str) and len(tok.encode(text, add_special_tokens=False)) > 0


def test_yes_probability_and_forecast_mae(ep, trained):
    out, _ = trained
    tok, model = load_tiny(out)
    prompts, y = outcome_prompts(ep, 'test', 'ihm', 5, seed=0)
    p = yes_probability(tok, model, prompts, batch_size=3)
    assert p.shape == (5,) and ((p > 0) & (p < 1)).all() and y.dtype == bool
    assert np.allclose(p, yes_probability(tok, model, prompts, batch_size=1), atol=1e-4)
    df = forecast_mae(out, ep, 'test', n=2, seed=0, max_new_tokens=8)               # 8 tokens: too short to parse
    assert list(df.feature) == FORECAST_FEATURES and (df.n_parsed == 0).all() and (df.n == 2).all()
    assert df.model_mae.isna().all() and df.lvcf_mae_all.notna().all()


def test_lora_trains_and_saves_merged_model(tiny, small, tmp_path):
    log = train_sft(tiny, small, tmp_path, max_steps=3, batch=1, grad_accum=2, lr=1e-2, lora=True, lora_r=4, lora_alpha=8, seed=0)
    assert (tmp_path / 'adapter' / 'adapter_config.json').is_file() and (tmp_path / 'config.json').is_file()
    assert log['probe_loss_after'] < log['probe_loss_before']
    tok, model = load_tiny(tmp_path)
    assert not any('lora' in n for n, _ in model.named_parameters())                   # merged: a plain Qwen3 model
    assert isinstance(generate_greedy(tok, model, [small[0]['prompt']], max_new_tokens=4)[0], str)


def test_base_model_path_errors(tiny, tmp_path):
    assert base_model_path(PROFILE) == tiny and stage_dir(PROFILE, 1).name == 'stage1'
    with pytest.raises(FileNotFoundError, match='/no/such/model'):
        base_model_path(PROFILE, '/no/such/model')
    with pytest.raises(FileNotFoundError, match='config.json'):
        base_model_path(PROFILE, tmp_path)
    bare = tmp_path / 'bare'
    shutil.copytree(tiny, bare)
    (bare / 'chat_template.jinja').unlink(missing_ok=True)
    cfg = json.loads((bare / 'tokenizer_config.json').read_text()); cfg.pop('chat_template', None)
    (bare / 'tokenizer_config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='chat template'):
        base_model_path(PROFILE, bare)
    with pytest.raises(ValueError, match='base_model='):             # a profile with neither SepsisAgent-tiny nor a base model
        base_model_path(get_profile('paper').override(base_model=None))
    with pytest.raises(FileNotFoundError, match='no-such-org/no-such-model'):   # a hub id this machine cannot fetch
        base_model_path(PROFILE, 'no-such-org/no-such-model')
    with pytest.raises(TypeError, match='stage1.learnig_rate'):
        curriculum_knobs(PROFILE, s1_learnig_rate=1.0)


def test_empty_dataset_errors(tiny, small, tmp_path):
    with pytest.raises(ValueError, match='empty'):
        to_dataset([], 'stage-I examples')
    with pytest.raises(ValueError, match='empty'):
        train_sft(tiny, small.select([]), tmp_path)
    with pytest.raises(TypeError, match='learning_rate'):
        sft_trainer(tiny, small, tmp_path, learning_rate=1.0)


def test_stage2_examples_and_inference_prompts(tiny, tmp_path):
    from sepsisagent.env import make_env
    from sepsisagent.baselines import load_or_train_baseline
    from sepsisagent.teacher import WorldModelTeacher
    from sepsisagent.agent import run_agent
    from sepsisagent.backends import TransformersBackend
    from sepsisagent.bc import transcript_examples, prompt_mismatches
    env = make_env(PROFILE, 'train', num_envs=2)
    recs = run_agent(env, WorldModelTeacher(env, load_or_train_baseline(PROFILE, 'clinicians')), [0, 1], memory='step')
    ex, counts = transcript_examples(recs, 'compact', 'step')
    n_steps = sum(r['metadata']['n_steps'] for r in recs)
    assert counts['steps'] == counts['kept_steps'] == n_steps and counts['examples'] == len(ex) == 2 * n_steps
    for x in ex:
        roles = [m['role'] for m in x['prompt']]
        assert roles in (['system', 'user'], ['system', 'user', 'assistant', 'tool'])
        assert x['kind'] == ('simulation' if len(roles) == 2 else 'prescription')
        assert x['completion'][0]['content'].strip().endswith('</tool_call>')
    ds = to_dataset(ex[:12], 'stage-II examples')
    tr, _ = sft_trainer(tiny, ds, tmp_path)
    assert prompt_mismatches(tr, TransformersBackend(tiny, device='cpu')) == []
