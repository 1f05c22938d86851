"""The Sepsis-3 cohort on a hand-made MIMIC-IV of a few patients whose onset we know: one stay per edge case."""
import math, os, re
from pathlib import Path

import pandas as pd
import pytest

from sepsisagent.core import get_profile, processed_dir, read_meta, upstream_key
from sepsisagent.synthicu import MIMIC_IV_COLUMNS
from sepsisagent.mimic import EmptyDataError, MimicSource

cohort = pytest.importorskip('sepsisagent.cohort')

H = lambda h: pd.Timedelta(hours=h)
T0 = pd.Timestamp('2150-01-01 08:17')                 # minutes on purpose: onsets are checked to the minute
NE, NACL, URINE, CULTURE = 221906, 225158, 226559, 70012
HR, MAP, SBP, DBP, RR, SPO2, TEMP = 220045, 220181, 220179, 220180, 220210, 220277, 223762
CREAT, PLT, BILI = 50912, 51265, 50885
D_ITEMS = {HR: ('Heart Rate', 'chartevents'), MAP: ('Non Invasive Blood Pressure mean', 'chartevents'),
           SBP: ('Non Invasive Blood Pressure systolic', 'chartevents'), DBP: ('Non Invasive Blood Pressure diastolic', 'chartevents'),
           RR: ('Respiratory Rate', 'chartevents'), SPO2: ('O2 saturation pulseoxymetry', 'chartevents'),
           TEMP: ('Temperature Celsius', 'chartevents'), NE: ('Norepinephrine', 'inputevents'),
           NACL: ('NaCl 0.9%', 'inputevents'), URINE: ('Foley', 'outputevents')}
D_LABITEMS = {CREAT: ('Creatinine', 'Chemistry'), PLT: ('Platelet Count', 'Hematology'), BILI: ('Bilirubin, Total', 'Chemistry')}
NOT_ADULT, NOT_FIRST, NO_SEPSIS, FEW_STEPS = ('not adult', 'not first ICU stay', 'no Sepsis-3 near ICU admission',
                                              'fewer than 2 steps')


class Fixture:
    "Rows of every MIMIC-IV table, built one patient at a time; times are hours from the stay's intime."
    def __init__(self): self.rows, self.adm = {t: [] for t in MIMIC_IV_COLUMNS}, {}

    def add(self, table, **row): self.rows[table].append(row)

    def stay(self, n, los_h, age=60, gender='M', first=None, intime=None, labs=True, pre_icu_h=6, dod=None,
             died=False, map_at=lambda h: 80, urine=True):
        "ICU stay `n` (stay_id 1000+n) with hourly vitals and urine, normal labs every 12 h; `first`: earlier stay of the admission."
        s = dict(subject_id=first['subject_id'] if first else n, hadm_id=first['hadm_id'] if first else 100 + n,
                 stay_id=1000 + n, intime=intime if intime is not None else T0 + pd.Timedelta(days=7 * n))
        s['outtime'] = s['intime'] + H(los_h)
        if first is None:
            self.add('hosp/patients', subject_id=s['subject_id'], gender=gender, anchor_age=age, anchor_year=s['intime'].year,
                     anchor_year_group='2008 - 2010', dod=dod)
            self.adm[s['hadm_id']] = dict(subject_id=s['subject_id'], pre_icu_h=pre_icu_h, died=died, stays=[])
        self.adm[s['hadm_id']]['stays'].append(s)
        self.add('icu/icustays', **{k: s[k] for k in ('subject_id', 'hadm_id', 'stay_id', 'intime', 'outtime')},
                 first_careunit='Medical Intensive Care Unit (MICU)', last_careunit='Medical Intensive Care Unit (MICU)',
                 los=round(los_h / 24, 4))
        for h in range(math.ceil(los_h)):   # data in every 4-h window
            for item, v in {HR: 90, MAP: map_at(h), SBP: 115, DBP: 62, RR: 18, SPO2: 97, TEMP: 37.0}.items():
                self.chart(s, item, h, v)
            if urine: self.add('icu/outputevents', **self._ids(s), charttime=self.at(s, h), itemid=URINE, value=80.0, valueuom='mL')
        for h in range(0, math.ceil(los_h), 12) if labs else []:
            for item, v in {CREAT: 0.9, PLT: 250.0, BILI: 0.6}.items(): self.lab(s, item, h, v)
        return s

    @staticmethod
    def at(s, h): return s['intime'] + H(h)
    @staticmethod
    def _ids(s): return dict(subject_id=s['subject_id'], hadm_id=s['hadm_id'], stay_id=s['stay_id'])

    def chart(self, s, itemid, h, value):
        self.add('icu/chartevents', **self._ids(s), charttime=self.at(s, h), storetime=self.at(s, h + 0.1), itemid=itemid,
                 value=str(value), valuenum=float(value), warning=0)

    def lab(self, s, itemid, h, value):
        i = len(self.rows['hosp/labevents']) + 1
        self.add('hosp/labevents', labevent_id=i, subject_id=s['subject_id'], hadm_id=s['hadm_id'], specimen_id=i, itemid=itemid,
                 charttime=self.at(s, h), value=str(value), valuenum=float(value), priority='ROUTINE')

    def norepinephrine(self, s, rate, h0, h1, weight=80.0):
        self.add('icu/inputevents', **self._ids(s), starttime=self.at(s, h0), endtime=self.at(s, h1), itemid=NE,
                 amount=rate * weight * 60 * (h1 - h0) / 1000, amountuom='mg', rate=rate, rateuom='mcg/kg/min',
                 orderid=len(self.rows['icu/inputevents']) + 1, ordercategoryname='01-Drips', patientweight=weight,
                 statusdescription='FinishedRunning')

    def fluid(self, s, ml, h):
        self.add('icu/inputevents', **self._ids(s), starttime=self.at(s, h), endtime=self.at(s, h + 0.5), itemid=NACL,
                 amount=float(ml), amountuom='mL', orderid=len(self.rows['icu/inputevents']) + 1,
                 ordercategoryname='02-Fluids (Crystalloids)', patientweight=80.0, statusdescription='FinishedRunning')

    def culture(self, s, h):
        i, t = len(self.rows['hosp/microbiologyevents']) + 1, self.at(s, h)
        self.add('hosp/microbiologyevents', microevent_id=i, subject_id=s['subject_id'], hadm_id=s['hadm_id'],
                 micro_specimen_id=i, chartdate=t.normalize(), charttime=t, spec_itemid=CULTURE,
                 spec_type_desc='BLOOD CULTURE', test_seq=1, test_itemid=90201, test_name='Blood Culture, Routine')

    def antibiotic(self, s, h, drug='Vancomycin', route='IV', drug_type='MAIN'):
        self.add('hosp/prescriptions', subject_id=s['subject_id'], hadm_id=s['hadm_id'],
                 pharmacy_id=len(self.rows['hosp/prescriptions']) + 1, starttime=self.at(s, h), stoptime=self.at(s, h + 48),
                 drug_type=drug_type, drug=drug, route=route, dose_val_rx='1', dose_unit_rx='g')

    def write(self, root: Path):
        "Every table of MIMIC_IV_COLUMNS as csv.gz, exactly the schema's columns in order (header only if no rows)."
        for hadm, a in self.adm.items():
            intime, outtime = min(s['intime'] for s in a['stays']), max(s['outtime'] for s in a['stays'])
            self.add('hosp/admissions', subject_id=a['subject_id'], hadm_id=hadm, admittime=intime - H(a['pre_icu_h']),
                     dischtime=outtime + H(1 if a['died'] else 24), deathtime=outtime + H(1) if a['died'] else None,
                     admission_type='EW EMER.', admission_location='EMERGENCY ROOM', hospital_expire_flag=int(a['died']))
        for item, (label, linksto) in D_ITEMS.items():
            self.add('icu/d_items', itemid=item, label=label, abbreviation=label, linksto=linksto, category='Fixture')
        for item, (label, cat) in D_LABITEMS.items():
            self.add('hosp/d_labitems', itemid=item, label=label, fluid='Blood', category=cat)
        for table, schema in MIMIC_IV_COLUMNS.items():
            cols = [c for c, _ in schema]
            unknown = {k for r in self.rows[table] for k in r} - set(cols)
            assert not unknown, f'{table}: no such column(s) {unknown}'
            df = pd.DataFrame(self.rows[table]).reindex(columns=cols)
            for c, typ in schema:
                if typ == 'int': df[c] = df[c].astype('Int64')
                elif typ in ('datetime', 'date'):
                    df[c] = pd.to_datetime(df[c]).dt.strftime('%Y-%m-%d %H:%M:%S' if typ == 'datetime' else '%Y-%m-%d')
            (root / table).parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(root / f'{table}.csv.gz', compression='gzip', index=False)


def write_fixture(root: Path, only=None) -> dict:
    "Write the fixture's MIMIC-IV under `root` (all stays, or the case numbers in `only`); return {stay_id: expected facts}."
    f, exp = Fixture(), {}
    def case(n, s, included, reason=None, onset=None, n_steps=None, **more):
        exp[s['stay_id']] = dict(case=n, s=s, included=included, reason=reason, onset=onset,
                                 suspected=more.pop('suspected', onset), n_steps=n_steps, **more)
    want = lambda n: only is None or n in only
    if want(1) or want(7):  # 1: culture 2 h before the antibiotic -> suspected = culture time
        s = f.stay(1, los_h=30, age=65, gender='F')
        f.culture(s, -0.5); f.antibiotic(s, 1.5); f.norepinephrine(s, 0.2, 2, 10); f.fluid(s, 1000, 1)
        f.add('hosp/diagnoses_icd', subject_id=1, hadm_id=s['hadm_id'], seq_num=1, icd_code='I5023', icd_version=10)
        case(1, s, True, onset=f.at(s, -0.5), n_steps=8, age=65, gender='F', charlson=2 + 1, died_90d=False, died_in_hospital=False)
        if want(7):  # 7: a second, septic ICU stay of the same admission
            s7 = f.stay(7, los_h=30, first=s, intime=s['outtime'] + H(18))
            f.culture(s7, 1); f.antibiotic(s7, 1); f.norepinephrine(s7, 0.2, 0, 8)
            case(7, s7, False, NOT_FIRST)
    if want(2):  # 2: culture 10 h after the antibiotic -> suspected = antibiotic time; died in hospital
        s = f.stay(2, los_h=40, dod=(T0 + pd.Timedelta(days=7 * 2 + 3)).normalize(), died=True)
        f.antibiotic(s, 1, 'Piperacillin-Tazobactam'); f.culture(s, 11); f.norepinephrine(s, 0.2, 2, 10)
        case(2, s, True, onset=f.at(s, 1), n_steps=10, died_90d=True, died_in_hospital=True)
    if want(3):  # 3: culture 30 h after the antibiotic: no suspicion of infection although vasopressors
        s = f.stay(3, los_h=48)
        f.antibiotic(s, 1); f.culture(s, 31); f.norepinephrine(s, 0.2, 2, 10)
        # not antibiotics for the cohort, though 11 h before the culture (they would give onset +20 h): topical, eye, BASE
        f.antibiotic(s, 20, route='TP'); f.antibiotic(s, 20, 'Erythromycin 0.5% Ophth Oint', route='OU')
        f.antibiotic(s, 20, drug_type='BASE')
        case(3, s, False, NO_SEPSIS)
    if want(4):  # 4: infection at +2 h, organ dysfunction only from hour 40 (creatinine 3.0 -> 2, MAP 60 -> 1)
        s = f.stay(4, los_h=60, map_at=lambda h: 60 if h >= 40 else 80)
        f.antibiotic(s, 2, 'Cefepime'); f.culture(s, 2)
        f.lab(s, CREAT, 40, 3.0); f.lab(s, CREAT, 52, 3.0)
        case(4, s, False, NO_SEPSIS)
    if want(5):  # 5: septic but a 4-h stay: one decision step
        s = f.stay(5, los_h=4)
        f.culture(s, 0); f.antibiotic(s, 0.5, 'Meropenem'); f.norepinephrine(s, 0.2, 0, 4)
        case(5, s, False, FEW_STEPS, onset=f.at(s, 0))
    if want(6):  # 6: paediatric, otherwise septic
        s = f.stay(6, los_h=30, age=16)
        f.culture(s, 0); f.antibiotic(s, 1, 'CeftriaXONE'); f.norepinephrine(s, 0.2, 1, 9)
        case(6, s, False, NOT_ADULT)
    if want(8):  # 8: no labevents at all, septic by vasopressor alone; 100 h stay -> 20 steps (the cap)
        s = f.stay(8, los_h=100, labs=False)
        f.culture(s, 3); f.antibiotic(s, 3.25, 'MetRONIDAZOLE (FLagyl)'); f.norepinephrine(s, 0.15, 2, 12)
        case(8, s, True, onset=f.at(s, 3), n_steps=20)
    if want(9):  # 9: suspected in the ED 20 h before ICU admission, SOFA >= 2 from ICU hour 0
        s = f.stay(9, los_h=36, pre_icu_h=26, dod=(T0 + pd.Timedelta(days=7 * 9 + 200)).normalize())
        f.culture(s, -20); f.antibiotic(s, -20); f.norepinephrine(s, 0.2, 0, 8)
        case(9, s, True, onset=f.at(s, -20), n_steps=9, died_90d=False)
    if want(10):  # 10: suspected 30 h before ICU admission: too early, although on vasopressors in the ICU
        s = f.stay(10, los_h=36, pre_icu_h=36)
        f.culture(s, -30); f.antibiotic(s, -30); f.norepinephrine(s, 0.2, 0, 8)
        case(10, s, False, NO_SEPSIS)
    if want(11):  # 11: Sepsis-3 in the ICU but 30 h after admission: an onset exists, outside the +-24 h window
        s = f.stay(11, los_h=48)
        f.culture(s, 30); f.antibiotic(s, 30); f.norepinephrine(s, 0.2, 28, 36)
        case(11, s, False, NO_SEPSIS, late_onset=f.at(s, 30))
    f.write(root)
    return exp


def _build(root, tables=None):
    with MimicSource(root, tables=tables) as src: return cohort.build_cohort(src)

@pytest.fixture(scope='module')
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp('mimic_fixture')
    expected = write_fixture(root)
    return root, expected, _build(root)

def _same_minute(a, b): return pd.notna(a) and abs(pd.Timestamp(a) - pd.Timestamp(b)) < pd.Timedelta(minutes=1)


def test_fixture_is_valid_mimic_iv(built):
    root, expected, _ = built
    with MimicSource(root) as src:
        rep = src.schema_report(n_rows=True)   # reads every value through the typed views
        assert set(rep.table) == set(MIMIC_IV_COLUMNS) and rep.missing_columns.map(len).sum() == 0
        assert rep.extra_columns.map(len).sum() == 0
        assert sorted(src.sql('select stay_id from icu.icustays').stay_id) == sorted(expected)


def test_every_stay_is_classified_once(built):
    _, expected, c = built
    assert sorted(c.all_stays.stay_id) == sorted(expected)
    assert c.all_stays.stay_id.is_unique
    assert sorted(c.stays.stay_id) == sorted(k for k, e in expected.items() if e['included'])


@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
def test_stay_inclusion_and_reason(built, n):
    _, expected, c = built
    sid, e = next((k, e) for k, e in expected.items() if e['case'] == n)
    row = c.all_stays.set_index('stay_id').loc[sid]
    assert bool(row.included) == e['included'], (n, row.exclusion_reason)
    if e['included']: assert pd.isna(row.exclusion_reason), (n, row.exclusion_reason)
    else: assert row.exclusion_reason == e['reason'], n


@pytest.mark.parametrize('n', [1, 2, 8, 9])
def test_onset_and_suspected_infection_time_to_the_minute(built, n):
    _, expected, c = built
    sid, e = next((k, e) for k, e in expected.items() if e['case'] == n)
    row = c.stays.set_index('stay_id').loc[sid]
    assert _same_minute(row.sepsis_onset, e['onset']), (n, row.sepsis_onset, e['onset'])
    assert _same_minute(row.suspected_infection_time, e['suspected']), (n, row.suspected_infection_time)
    assert (row.subject_id, row.hadm_id) == (e['s']['subject_id'], e['s']['hadm_id'])
    assert _same_minute(row.intime, e['s']['intime']) and _same_minute(row.outtime, e['s']['outtime'])


def test_septic_but_excluded_stays_keep_their_onset(built):
    "A short stay (5) is septic at ICU admission; the late one (11) has an onset 30 h after it, so outside the window."
    _, expected, c = built
    al = c.all_stays.set_index('stay_id')
    five = next(e for e in expected.values() if e['case'] == 5)
    assert _same_minute(al.loc[five['s']['stay_id'], 'sepsis_onset'], five['onset'])
    late = next(e for e in expected.values() if e['case'] == 11)
    assert _same_minute(al.loc[late['s']['stay_id'], 'sepsis_onset'], late['late_onset'])
    # 3 (culture too late), 4 (SOFA too late) and 10 (suspicion 30 h before: no ICU hour within S+24 h) have no onset
    # near admission: missing, or outside [intime - 24 h, intime + 24 h]
    for e in expected.values():
        if e['case'] in (3, 4, 10):
            onset, intime = al.loc[e['s']['stay_id'], 'sepsis_onset'], e['s']['intime']
            assert pd.isna(onset) or abs(pd.Timestamp(onset) - intime) > H(24), (e['case'], onset)


def test_steps_and_static_columns_of_included_stays(built):
    _, expected, c = built
    st = c.stays.set_index('stay_id')
    for sid, e in expected.items():
        if not e['included']: continue
        assert int(st.loc[sid, 'n_steps']) == e['n_steps'], (e['case'], st.loc[sid, 'n_steps'])
        for col in ('age', 'gender', 'died_90d', 'died_in_hospital'):
            if col in e: assert st.loc[sid, col] == e[col], (e['case'], col, st.loc[sid, col])
        if 'charlson' in e: assert st.loc[sid, 'charlson_comorbidity_index'] == e['charlson']


def test_flow_table_adds_up(built):
    _, expected, c = built
    flow = c.flow
    assert list(flow.columns[:3]) == ['step', 'remaining', 'excluded']
    assert flow.remaining.iloc[0] == len(expected)            # first row: every ICU stay
    rem, exc = flow.remaining.to_numpy(), flow.excluded.to_numpy()
    assert all(rem[i] == rem[i - 1] - exc[i] for i in range(1, len(flow)))
    assert rem[-1] == len(c.stays) == sum(e['included'] for e in expected.values())
    # exclusions in the order of the criteria
    assert list(exc[1:]) == [1, 1, 4, 1]
    assert c.all_stays.exclusion_reason.value_counts().to_dict() == {NO_SEPSIS: 4, NOT_ADULT: 1, NOT_FIRST: 1, FEW_STEPS: 1}


def test_missing_microbiologyevents_file_is_a_clear_error(tmp_path):
    write_fixture(tmp_path, only=[1, 2])
    (tmp_path / 'hosp' / 'microbiologyevents.csv.gz').unlink()
    with pytest.raises(Exception, match='microbiologyevents'):
        _build(tmp_path)


def test_source_opened_without_microbiologyevents_is_a_clear_error(tmp_path):
    write_fixture(tmp_path, only=[1, 2])
    with pytest.raises(Exception, match='microbiologyevents'):
        _build(tmp_path, tables=[t for t in MIMIC_IV_COLUMNS if t != 'hosp/microbiologyevents'])


def test_empty_cohort_is_explicit(tmp_path):
    "Only the paediatric stay: an error saying the cohort is empty, which criterion emptied it, and the flow."
    write_fixture(tmp_path, only=[6])
    with pytest.raises(EmptyDataError) as e:
        _build(tmp_path)
    msg = str(e.value)
    assert re.search(r'cohort of .* is empty: all 1 ICU stays are excluded, the last 1 as .not adult', msg)
    assert 'Empty on the way' not in msg       # nothing is empty: the patient is a child
    assert re.search(r'excluded: not adult +0 +1', msg), msg


def test_cohort_cache_follows_the_files(tmp_path, monkeypatch):
    "Keyed by the files' content, not the folder: touched is a hit; repaired in place, it is rebuilt."
    root = tmp_path / 'mimic'
    write_fixture(root, only=[1, 2])
    monkeypatch.setenv('SEPSISAGENT_DATA', str(tmp_path / 'data'))
    prof = get_profile('quick', source='mimic', mimic_dir=str(root))
    builds = []
    real = cohort.build_cohort
    monkeypatch.setattr(cohort, 'build_cohort', lambda src, **kw: builds.append(1) or real(src, **kw))
    charlson = lambda c: c.stays.set_index('stay_id').charlson_comorbidity_index.to_dict()
    before = charlson(cohort.load_or_build_cohort(prof))
    meta = lambda: read_meta(processed_dir(prof) / 'cohort')
    key, tables = upstream_key(processed_dir(prof) / 'cohort'), meta()['inputs']['tables']
    assert len(builds) == 1 and meta()['source'] == str(root.resolve()) and 'source' not in meta()['inputs']
    cohort.load_or_build_cohort(prof)
    os.utime(root / 'icu' / 'chartevents.csv.gz', ns=(10**18, 10**18))     # touched, same bytes
    cohort.load_or_build_cohort(prof)
    assert len(builds) == 1
    # repaired in place: a diagnosis of stay 1002's admission was missing (heart failure: Charlson + 1)
    dx = root / 'hosp' / 'diagnoses_icd.csv.gz'
    rows = pd.read_csv(dx, dtype=str)
    new = pd.DataFrame([dict(subject_id='2', hadm_id='102', seq_num='1', icd_code='I5023', icd_version='10')])
    pd.concat([rows, new]).to_csv(dx, index=False, compression='gzip')
    after = charlson(cohort.load_or_build_cohort(prof))
    assert len(builds) == 2 and after == before | {1002: before[1002] + 1}
    changed = [k for k, v in meta()['inputs']['tables'].items() if v != tables[k]]
    assert changed == ['hosp/diagnoses_icd.csv.gz']
    key2 = upstream_key(processed_dir(prof) / 'cohort')
    assert key2 != key
    cohort.load_or_build_cohort(prof)
    assert len(builds) == 2
    cohort.load_or_build_cohort(prof, force=True)          # rebuilt from the same files: the same key
    assert len(builds) == 3 and upstream_key(processed_dir(prof) / 'cohort') == key2


def test_missing_urine_is_not_anuria(tmp_path):
    "A stay with no urine charted at all must not score renal 4 after 24 h: missing data is not anuria."
    f = Fixture()
    septic = f.stay(1, los_h=30)        # so that the cohort is not empty (an empty one is an error)
    f.culture(septic, -0.5); f.antibiotic(septic, 1.5); f.norepinephrine(septic, 0.2, 2, 10)
    s = f.stay(12, los_h=48, urine=False)
    f.antibiotic(s, 2, 'Cefepime'); f.culture(s, 2)
    f.write(tmp_path)
    row = _build(tmp_path).all_stays.set_index('stay_id').loc[s['stay_id']]
    assert not row.included and row.exclusion_reason == NO_SEPSIS
