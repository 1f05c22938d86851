"""Bad input fails at the step that sees it, with a `MimicError` naming the file or what came out empty,
and caches nothing. Small sources only: the hand-made MIMIC-IV of test_cohort_fixture.py, and a copy of the
quick SynthICU's tables.
"""
import gzip, shutil
from pathlib import Path

import pandas as pd
import pytest

from sepsisagent import cohort, episodes
from sepsisagent.core import get_profile, processed_dir
from sepsisagent.synthicu import MIMIC_IV_COLUMNS
from sepsisagent.mimic import EmptyDataError, MimicError, MimicSource, UnreadableFileError
from sepsisagent.synthicu import load_or_build_synthicu
from test_cohort_fixture import write_fixture


@pytest.fixture(scope='module')
def quick_root():
    return load_or_build_synthicu(get_profile('quick'))


def _quick_copy(quick_root: Path, dest: Path) -> Path:
    "The quick SynthICU's hosp/ and icu/ (3 MB), to break."
    for m in ('hosp', 'icu'): shutil.copytree(quick_root / m, dest / m)
    return dest


def _profile(src: Path, tmp_path: Path, monkeypatch):
    "The quick profile reading `src` as MIMIC-IV, its caches under `tmp_path`."
    monkeypatch.setenv('SEPSISAGENT_DATA', str(tmp_path / 'data'))
    return get_profile('quick', source='mimic', mimic_dir=str(src))


def _cached(prof) -> list[str]:
    "What is in the profile's processed folder, lock files aside."
    return sorted(p.name for p in processed_dir(prof).iterdir() if not p.name.endswith('.lock'))


def _flip(file: Path, at: float, n: int = 64):
    "Invert `n` bytes of `file` at the fraction `at` of its length: a corrupted copy."
    b = bytearray(file.read_bytes())
    i = int(at * len(b))
    b[i:i + n] = bytes(x ^ 0xFF for x in b[i:i + n])
    file.write_bytes(bytes(b))


# (a) a file that cannot be read to its end

def test_truncated_csv_gz_is_named_and_nothing_is_cached(tmp_path, monkeypatch):
    root = tmp_path / 'mimic'
    write_fixture(root, only=[1, 2])
    f = root / 'icu' / 'chartevents.csv.gz'
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])      # cut in the middle: the header still reads
    prof = _profile(root, tmp_path, monkeypatch)
    with pytest.raises(UnreadableFileError, match=r'chartevents\.csv\.gz') as e:
        cohort.load_or_build_cohort(prof)
    assert isinstance(e.value, MimicError) and isinstance(e.value, ValueError)
    assert 'icu/chartevents' in str(e.value)
    assert _cached(prof) == []


def test_corrupted_csv_gz_is_named_at_first_read_and_nothing_is_cached(quick_root, tmp_path, monkeypatch):
    "Corrupted past what DuckDB samples: the view opens, the first full read fails; the CRC check, before it."
    root = _quick_copy(quick_root, tmp_path / 'mimic')
    _flip(root / 'icu' / 'chartevents.csv.gz', at=0.9)
    with MimicSource(root, tables=cohort.REQUIRED_TABLES) as src:     # DuckDB alone: files above VERIFY_BELOW
        with pytest.raises(UnreadableFileError, match=r'Cannot read .*chartevents\.csv\.gz'):
            cohort.build_cohort(src)
    prof = _profile(root, tmp_path, monkeypatch)
    with pytest.raises(UnreadableFileError, match=r'chartevents\.csv\.gz is not a whole gzip file'):
        cohort.load_or_build_cohort(prof)                              # the CRC check before the build
    monkeypatch.setattr(MimicSource, 'verify', lambda self, below=0: [])
    with pytest.raises(UnreadableFileError, match=r'chartevents\.csv\.gz'):
        cohort.load_or_build_cohort(prof)                              # DuckDB, inside the build
    assert _cached(prof) == []


def test_flipped_crc_is_found_by_verify_only(quick_root, tmp_path):
    "DuckDB reads a gzip file whose CRC is wrong without a word: `verify` is what finds it."
    root = _quick_copy(quick_root, tmp_path / 'mimic')
    f = root / 'hosp' / 'prescriptions.csv.gz'
    b = bytearray(f.read_bytes())
    b[-6] ^= 1
    f.write_bytes(bytes(b))
    with MimicSource(root, tables=['hosp/prescriptions']) as src:
        assert src.sql('select count(*) as n from hosp.prescriptions').n[0] > 0
        with pytest.raises(UnreadableFileError, match=r'prescriptions\.csv\.gz.*CRC'):
            src.verify()


# (b) events that give no cohort

def _header_only(root: Path, table: str):
    "Empty `table` in place: its header, no rows."
    header = ','.join(c for c, _ in MIMIC_IV_COLUMNS[table])
    with gzip.open(root / f'{table}.csv.gz', 'wt') as fh: fh.write(header + '\n')


@pytest.mark.parametrize('table, said', [
    ('icu/chartevents', ["'fewer than 2 steps'", 'icu.chartevents (', 'chartevents.csv.gz',
                         'derived.vitalsign']),
    ('hosp/prescriptions', ["'no Sepsis-3 near ICU admission'", 'hosp.prescriptions (', 'derived.antibiotic',
                            'derived.suspicion_of_infection', 'derived.sepsis3']),
    ('icu/icustays', ['no ICU stay', 'icu.icustays (', 'derived.icustay_detail']),
])
def test_empty_table_fails_at_the_cohort_naming_it(tmp_path, monkeypatch, table, said):
    root = tmp_path / 'mimic'
    write_fixture(root, only=[1, 2, 8])
    _header_only(root, table)
    prof = _profile(root, tmp_path, monkeypatch)
    with pytest.raises(EmptyDataError) as e:
        cohort.load_or_build_cohort(prof)
    msg = str(e.value)
    assert msg.startswith(f'The cohort of {root.resolve()} is empty') and isinstance(e.value, ValueError)
    assert all(s in msg for s in said), msg
    assert 'Cohort flow' in msg and _cached(prof) == []


def test_only_what_empties_the_cohort_is_named(tmp_path):
    "Not the tables empty by nature (no ventilation in the fixture): only those that empty what they feed."
    root = tmp_path / 'mimic'
    write_fixture(root, only=[1, 2, 8])
    _header_only(root, 'icu/chartevents')
    with MimicSource(root, tables=cohort.REQUIRED_TABLES) as src:
        cohort.create_concepts(src)
        assert cohort.empty_upstream(src, 'steps_with_data') == ['icu.chartevents', 'derived.vitalsign']
        assert cohort.empty_upstream(src, 'icustay_detail') == []
    _header_only(root, 'hosp/prescriptions')
    with MimicSource(root, tables=cohort.REQUIRED_TABLES) as src:
        cohort.create_concepts(src)
        assert cohort.empty_upstream(src, 'sepsis3') == ['hosp.prescriptions', 'derived.antibiotic',
                                                         'derived.suspicion_of_infection', 'derived.sepsis3']


# (c) a feature never measured

def test_feature_never_measured_fails_at_the_episodes_naming_it(quick_root, tmp_path, monkeypatch):
    "No lactate in labevents: the cohort builds (no lactate in SOFA); the episodes name it, cache nothing."
    root = _quick_copy(quick_root, tmp_path / 'mimic')
    f = root / 'hosp' / 'labevents.csv.gz'
    lab = pd.read_csv(f, dtype=str, keep_default_na=False)     # strings in, strings out: nothing re-typed
    lactate = str(cohort.LAB_ITEMIDS['lactate'])
    assert (lab.itemid == lactate).any()
    lab[lab.itemid != lactate].to_csv(f, index=False, compression='gzip')
    prof = _profile(root, tmp_path, monkeypatch)
    c = cohort.load_or_build_cohort(prof)
    assert len(c.stays) > 0 and _cached(prof) == ['cohort', 'cohort.meta.json']
    with pytest.raises(EmptyDataError, match=r"1 feature\(s\) never measured .*: lactate from derived\.lab "
                                             r"\(hosp/labevents, itemid 50813\)"):
        episodes.load_or_build_episodes(prof)
    assert _cached(prof) == ['cohort', 'cohort.meta.json']
