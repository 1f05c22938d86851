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
