"""SynthICU seen through the MIMIC-IV reader, and bad input: one clear error each, nothing half-written."""
import os, shutil
from pathlib import Path

import pytest

from sepsisagent import core, synthicu
from sepsisagent.core import get_profile
from sepsisagent.synthicu import MIMIC_IV_COLUMNS
from sepsisagent.mimic import MimicSource
from sepsisagent.synthicu import SynthICU, build_synthicu, load_or_build_synthicu

TINY = {'synthicu.n_stays': 40, 'synthicu.site_b_stays': 10, 'synthicu.hours': 16}


@pytest.fixture(scope='module')
def quick_root():
    return load_or_build_synthicu(get_profile('quick'))


@pytest.mark.parametrize('site', ['.', 'site_b'])
def test_both_sites_open_as_mimic_iv(quick_root, site):
    with MimicSource(quick_root / site) as src:
        rep = src.schema_report(n_rows=True)   # reads every value through the typed views: a bad type fails here
        assert set(rep.table) == set(MIMIC_IV_COLUMNS)
        assert rep.missing_columns.map(len).sum() == 0
        n = src.sql('select count(*) as n from icu.icustays').n[0]
        first = src.sql('select count(distinct hadm_id) as n from icu.icustays').n[0]
        assert 0 < first < n, 'some stays must be second ICU stays of an admission'
        # vasopressors in MIMIC units, urine in mL, temperatures in both units (a MIMIC quirk SynthICU keeps)
        units = src.sql("select distinct rateuom from icu.inputevents where itemid = 221906").rateuom.tolist()
        assert units == ['mcg/kg/min']
        temps = src.sql("select distinct itemid from icu.chartevents where itemid in (223761, 223762)").itemid
        assert set(temps) == {223761, 223762}


def test_septic_share_and_truth_are_consistent(quick_root):
    world = SynthICU(quick_root)
    ts = world.truth_stays
    assert 0.25 <= 1 - ts.septic.mean() <= 0.35
    with MimicSource(quick_root) as src:
        stays = src.sql('select stay_id from icu.icustays').stay_id
    assert set(stays) == set(ts.stay_id)


def test_unknown_profile_is_one_clear_error():
    with pytest.raises(ValueError, match="'nope'.*quick"):
        load_or_build_synthicu('nope')


def test_unwritable_data_dir_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a directory')
    monkeypatch.setenv('SEPSISAGENT_DATA', str(blocker))
    with pytest.raises(PermissionError, match='a_file'):
        load_or_build_synthicu(get_profile('quick', **TINY))


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv('SEPSISAGENT_DATA', str(tmp_path))
    real = synthicu.write_truth

    def crash(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt('power cut')
    monkeypatch.setattr(synthicu, 'write_truth', crash)
    with pytest.raises(KeyboardInterrupt):
        load_or_build_synthicu(get_profile('quick', **TINY))
    target = core.raw_dir(get_profile('quick'), 'synthicu')
    assert not target.exists()
    leftovers = [p for p in target.parent.iterdir() if not p.name.endswith('.lock')]
    assert leftovers == [], leftovers
    monkeypatch.setattr(synthicu, 'write_truth', real)
    assert (load_or_build_synthicu(get_profile('quick', **TINY)) / 'icu' / 'icustays.csv.gz').exists()


def test_mimic_dir_without_icu_is_one_clear_error(quick_root, tmp_path):
    shutil.copytree(quick_root / 'hosp', tmp_path / 'hosp')
    with pytest.raises(Exception, match='icu'):
        MimicSource(tmp_path)


def test_missing_table_names_the_file(quick_root, tmp_path):
    shutil.copytree(quick_root / 'hosp', tmp_path / 'hosp')
    shutil.copytree(quick_root / 'icu', tmp_path / 'icu')
    (tmp_path / 'icu' / 'inputevents.csv.gz').unlink()
    with pytest.raises(FileNotFoundError, match='inputevents'):
        MimicSource(tmp_path)


def test_same_seed_same_hospital(tmp_path):
    prof = get_profile('quick', **TINY)
    build_synthicu(prof, tmp_path / 'a')
    build_synthicu(prof, tmp_path / 'b')
    for t in ['icu/chartevents', 'hosp/labevents', 'icu/inputevents']:
        a = (tmp_path / 'a' / f'{t}.csv.gz')
        b = (tmp_path / 'b' / f'{t}.csv.gz')
        import gzip
        assert gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes()), t


def test_episodes_chain_on_what_the_cohort_was_built_from(quick_root, tmp_path, monkeypatch):
    "A cohort rebuilt from the same files keeps the episodes; a table changed in place rebuilds both."
    import pandas as pd
    from sepsisagent import cohort, episodes
    from sepsisagent.core import processed_dir, read_meta, upstream_key
    root = tmp_path / 'mimic'
    for m in ('hosp', 'icu'): shutil.copytree(quick_root / m, root / m)
    monkeypatch.setenv('SEPSISAGENT_DATA', str(tmp_path / 'data'))
    prof = get_profile('quick', source='mimic', mimic_dir=str(root))
    builds = []
    for mod, name in ((cohort, 'build_cohort'), (episodes, 'build_episodes')):
        def counted(*a, _real=getattr(mod, name), _name=name, **kw):
            builds.append(_name)
            return _real(*a, **kw)
        monkeypatch.setattr(mod, name, counted)
    ep = processed_dir(prof) / 'episodes'
    before = episodes.load_or_build_episodes(prof)
    meta, key = read_meta(ep), upstream_key(processed_dir(prof) / 'cohort')
    assert builds == ['build_cohort', 'build_episodes'] and meta['inputs']['cohort'] == key
    cohort.load_or_build_cohort(prof, force=True)          # the same files, built again
    episodes.load_or_build_episodes(prof)
    assert builds == ['build_cohort', 'build_episodes', 'build_cohort'] and read_meta(ep) == meta
    dx = root / 'hosp' / 'diagnoses_icd.csv.gz'             # every diagnosis lost, in place
    pd.read_csv(dx, dtype=str, keep_default_na=False)[:0].to_csv(dx, index=False, compression='gzip')
    after = episodes.load_or_build_episodes(prof)
    assert builds[3:] == ['build_cohort', 'build_episodes']
    assert read_meta(ep)['inputs']['cohort'] == upstream_key(processed_dir(prof) / 'cohort') != key
    assert after.stays.charlson_comorbidity_index.sum() < before.stays.charlson_comorbidity_index.sum()
