"""The compendium's shape: declared dependencies, clean notebooks, exported modules, README quick start."""
import configparser, json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini')
    d = cfg['DEFAULT']
    return d['requirements'].split() + d['dev_requirements'].split()


def test_every_requirement_is_in_environment_yml():
    env = (ROOT / 'environment.yml').read_text()
    listed = {re.split(r'[<>=!\[]', line.strip().lstrip('- '))[0].lower() for line in env.splitlines() if line.strip().startswith('- ')}
    missing = [r for r in _requirements() if re.split(r'[<>=!\[]', r)[0].lower() not in listed]
    assert not missing, f'environment.yml lacks {missing}'


def test_nbdev2_pins_and_torch_pin():
    reqs = ' '.join(_requirements())
    for pin in ['nbdev>=2.4,<3', 'execnb<0.2', 'fastcore<1.9', 'torch==2.13.0']:
        assert pin in reqs, pin


def test_library_notebooks_are_committed_without_outputs():
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        assert not any(c.get('outputs') for c in cells if c['cell_type'] == 'code'), f'{nb.name} has outputs'


def test_every_exported_notebook_has_its_module():
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        src = ''.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'])
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', src, re.M)
        if m:
            assert (ROOT / 'sepsisagent' / f"{m.group(1).replace('.', '/')}.py").exists(), f'{nb.name}: run nbdev_export'


def test_notebooks_are_numbered_and_have_a_parameters_cell():
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
        script = [''.join(c['source']) for c in cells if c['cell_type'] == 'code' and '#| export' not in ''.join(c['source'])]
        if any('get_profile(profile' in src for src in script):       # the notebook reads the `profile` parameter (library functions take it as an argument)
            assert tagged, f'{nb.name} reads `profile` but has no papermill parameters cell'


def test_readme_quick_start_is_exactly_the_two_commands():
    text = (ROOT / 'README.md').read_text()
    m = re.search(r'## Quick start\s*\n+```(?:bash|sh)?\n(.*?)```', text, re.S)
    assert m, 'README.md needs a "## Quick start" section with a code block'
    assert [l.strip() for l in m.group(1).strip().splitlines()] == ['make paper', 'make test']


def test_ci_runs_make_test():
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()


def _code_cells(nb: Path) -> list[str]:
    return [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']


def test_every_result_file_has_one_writer():
    "One file, one writer: a table or figure written by two notebooks depends on which ran last."
    writers: dict[str, set] = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        for line in '\n'.join(_code_cells(nb)).splitlines():
            if re.search(r'write_text\(|to_csv\(|savefig\(', line) and re.search(r'tab|fig|results_dir\(|\bout\b', line):
                if re.search(r"\bout /", line): continue            # an artifact's own folder, not results/
                for name in re.findall(r"'([\w.-]+\.(?:md|csv|png))'", line):
                    writers.setdefault(name, set()).add(nb.name)
    assert writers.get('main.md') == {'23_truth.ipynb'}, writers.get('main.md')
    shared = {k: sorted(v) for k, v in writers.items() if len(v) > 1}
    assert not shared, f'written by more than one notebook: {shared}'


def _notebook_modules() -> dict[str, Path]:
    "module name -> the numbered notebook that exports it."
    out = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', '\n'.join(_code_cells(nb)), re.M)
        if m: out[m.group(1)] = nb
    return out


def _imported_modules(nb: Path) -> set[str]:
    "Package modules a notebook imports anywhere (exported or not, top level or inside a function)."
    code = '\n'.join(_code_cells(nb))
    found = set(re.findall(r'\bfrom\s+sepsisagent\.(\w+)\s+import\b', code))
    found |= set(re.findall(r'\bimport\s+sepsisagent\.(\w+)', code))
    for names in re.findall(r'\bfrom\s+sepsisagent\s+import\s+\(?([\w,\s]+)\)?', code):
        found |= {n.strip() for n in names.split(',') if n.strip()}
    return found


def test_notebooks_import_only_from_earlier_notebooks():
    "Reading order is dependency order: a notebook imports only what an earlier-numbered one exports."
    where = _notebook_modules()
    assert {'core', 'synthicu', 'mimic', 'baselines', 'agent'} <= set(where), sorted(where)
    late = []
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        for mod in sorted(_imported_modules(nb) & set(where)):
            if where[mod].name[:2] > nb.name[:2]: late.append(f'{nb.name} imports {mod} ({where[mod].name})')
    assert not late, 'imports from a later notebook: ' + '; '.join(late)


def test_the_import_check_sees_every_kind_of_import(tmp_path):
    nb = tmp_path / '05_x.ipynb'
    cells = ['from sepsisagent.agent import a', '    import sepsisagent.env as e', 'from sepsisagent import (ope,\n rl)']
    nb.write_text(json.dumps({'cells': [{'cell_type': 'code', 'source': [c]} for c in cells]}))
    assert _imported_modules(nb) == {'agent', 'env', 'ope', 'rl'}


def test_no_training_budget_in_seconds():
    "Budgets are epochs, updates or steps: a wall-clock cap trains other weights on a busy machine."
    src = '\n'.join(s for nb in sorted((ROOT / 'nbs').glob('*.ipynb')) for s in _code_cells(nb))
    for pattern in (r'max_minutes', r'wm_minutes', r'cfg\.minutes', r'max_seconds', r'time_limit'):
        assert not re.search(pattern, src), f'a wall-clock training budget ({pattern}) is back'


def test_paper_checks_profile_before_the_first_notebook():
    "`make paper` resolves the profile and its overrides, and the results folder, before running anything."
    import subprocess, sys
    recipe = (ROOT / 'Makefile').read_text().split('\npaper:')[1].split('\ntest:')[0]
    assert recipe.index('sepsisagent.core check') < recipe.index('papermill'), 'the check must come first'
    assert 'results/$(PROFILE)' not in recipe, 'executed notebooks go to the folder the code reports, not a hard-coded one'
    run = lambda *a, **env: subprocess.run([sys.executable, '-m', 'sepsisagent.core', *a], capture_output=True, text=True,
                                          cwd=ROOT, env={**__import__('os').environ, **env})
    bad = run('check', 'bogus')
    assert bad.returncode and 'bogus' in bad.stderr and 'quick' in bad.stderr
    typo = run('check', 'quick', SEPSISAGENT_OVERRIDES='{"worldmodel.epoch": 2}')
    assert typo.returncode and 'worldmodel.epoch' in typo.stderr
    wrong = run('check', 'quick', SEPSISAGENT_OVERRIDES='{"worldmodel.epochs": "two"}')
    assert wrong.returncode and 'worldmodel.epochs' in wrong.stderr
    shown = run('show', 'quick', SEPSISAGENT_OVERRIDES='{"stage3.beta": 0.5}')
    assert shown.returncode == 0 and 'stage3.beta = 0.5' in shown.stdout, shown.stderr
    ok = run('check', 'quick')
    assert ok.returncode == 0 and ok.stdout.strip().endswith('quick'), ok.stderr


# Spelled in pieces so that this file does not contain what it forbids.
_OUTSIDE_REFERENCES = ('upstream' + '.md', 'AGENT' + '_SPEC', 'shared' + '/reference')


def test_the_repository_carries_its_own_references():
    """Nothing cites files that live outside the repository; the published facts are in nbs/paper.ipynb.

    (results/ is left out: its tables are regenerated by `make paper`.)"""
    files = [ROOT / name for name in ('README.md', 'Makefile', 'settings.ini', 'environment.yml', 'setup.py')]
    for folder in ('nbs', 'sepsisagent', 'tests', '.ci'):
        files += [p for p in (ROOT / folder).rglob('*') if p.is_file() and '__pycache__' not in p.parts]
    hits = [f'{p.relative_to(ROOT)}: {s}' for p in files if p.exists()
            for s in _OUTSIDE_REFERENCES if s in p.read_text(errors='ignore')]
    assert not hits, 'cite the paper and nbs/paper.ipynb instead of: ' + '; '.join(hits)
    paper = ROOT / 'nbs' / 'paper.ipynb'
    assert paper.exists(), 'nbs/paper.ipynb (the published system, in brief) is missing'
    cells = json.loads(paper.read_text())['cells']
    assert all(c['cell_type'] == 'markdown' for c in cells), 'nbs/paper.ipynb holds prose only'
    assert 'arXiv 2605.14723' in ''.join(''.join(c['source']) for c in cells)


def test_readme_profile_table_is_generated_from_the_profiles():
    "The README's knob table is `core.profile_table()`, so it cannot drift from the code."
    from sepsisagent.core import profile_table
    text = (ROOT / 'README.md').read_text()
    m = re.search(r'<!-- profile-table:start -->\n(.*?)\n<!-- profile-table:end -->', text, re.S)
    assert m, 'README.md lost its profile-table markers'
    assert m.group(1).strip() == profile_table(), 'README profile table is stale: paste `python -m sepsisagent.core table`'


def test_every_knob_lives_in_the_profile():
    "One source of every knob: no notebook but 00_core keeps a per-profile table of sizes."
    tables = re.compile(r"^(\w+)\s*(?::[^=]*)?=\s*\{\s*\n?\s*'(quick|default)'\s*:", re.M)
    found = [f'{nb.name}: {m.group(1)}' for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb'))
             if nb.name != '00_core.ipynb' for m in tables.finditer('\n'.join(_code_cells(nb)))]
    assert not found, f'per-profile knob tables outside the Profile: {found}'
    assert tables.search("RL_KNOBS = {\n    'quick':   dict(updates=2)}"), 'the check must see such a table'


def test_code_lines_are_short_and_exported_statements_unchained():
    "Readable code: every notebook code line <= 110 characters; no `;`-chained statements in exported code."
    import io, tokenize
    long, chained = [], []
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        for cell in _code_cells(nb):
            long += [f'{nb.name}: {l[:60]}...' for l in cell.splitlines() if len(l) > 110]
            if not cell.startswith('#| export'): continue
            toks = tokenize.generate_tokens(io.StringIO(cell).readline)
            chained += [f'{nb.name}:{t.start[0]}' for t in toks if t.type == tokenize.OP and t.string == ';']
    assert not long, f'{len(long)} code lines over 110 characters: {long[:5]}'
    assert not chained, f'`;`-chained statements in exported code: {chained[:5]}'


def test_no_private_name_is_imported_across_modules():
    "A module uses another's public names only: a private one is an implementation detail of its notebook."
    import ast
    found = []
    for f in sorted((ROOT / 'sepsisagent').glob('*.py')):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('sepsisagent')):
                found += [f'{f.stem} imports {node.module}.{a.name}' for a in node.names if a.name.startswith('_')]
    assert not found, found
