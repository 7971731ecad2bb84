"""The README and docs/ stay true: every relative link and project path they name exists, every flag they show
is one its command takes, every config key they show is in the config schema, and the docs' tables of config
keys list exactly the schema's keys (and each method's) with their defaults. The checks are run on the real
docs, and on made-up text with a dead link, an unknown flag and an unknown key, which they must report."""
import contextlib
import importlib
import io
import re
import shlex
import textwrap
import subprocess
from functools import lru_cache

import pytest
import yaml

from allspark.config import SCHEMA, registered_method, registered_methods, results_table

from helpers import ROOT

DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
CONFIG_TABLE = ROOT / "docs" / "training.md"  # holds the tables of config keys
# paths in backticks under these folders (or these files) must exist; exp/, data/ and the like are the user's
PROJECT_DIRS = ("allspark", "configs", "scripts", "tests", "splits", "docs", "pretrained_weights", ".ci")
PROJECT_FILES = ("train.py", "eval.py", "predict.py", "requirements.txt", "CHANGELOG.md", "README.md", "LICENSE",
                 "pytest.ini")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)  # (indent, language, body)
HELP_SCRIPTS = ("scripts/train.sh", "scripts/slurm_train.sh")  # the launchers answer --help; demo.sh takes a method only


# ---- what the project accepts -----------------------------------------------------------------------------

def _python_help(module, argv):
    """The --help text of an argparse entry point (a root script or a ``python -m`` module)."""
    mod = importlib.import_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        if hasattr(mod, "cli") and module in ("train", "eval", "predict"):
            mod.parse_args(argv)
        else:
            mod.main(argv)
    return out.getvalue()


@lru_cache(maxsize=None)
def help_text(command: str, sub: str = "") -> str:
    """The help of ``command``: 'train.py', 'allspark.summarize', 'scripts/train.sh', ... (``sub``: a subcommand)."""
    if command.endswith(".sh"):
        if command not in HELP_SCRIPTS:
            return ""
        return subprocess.run(["bash", command, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    module = command.removesuffix(".py").replace("/", ".")
    if module in ("allspark.selfcheck", "allspark.summarize"):
        module = module.replace("allspark.", "allspark.tools.")
    return _python_help(module, ([sub] if sub else []) + ["--help"])


def flags_of(command: str, sub: str = "") -> set:
    return set(re.findall(r"--[a-z][a-z0-9-]*", help_text(command, sub)))


def config_defaults():
    """{key: [(methods, default)]}: the schema's keys, then each method's own."""
    table = {name: [("", key)] for name, key in SCHEMA.items()}
    method_keys = {}
    for method in registered_methods():
        for name, key in registered_method(method).keys.items():
            method_keys.setdefault((name, _render(key.default, key.required)), []).append(method)
    return table, method_keys


def _render(default, required=False):
    """A default as the docs' tables write it (in backticks): required, null, true, 2, [0.75, 1.0], original."""
    if required:
        return "required"
    return yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def known_key(dotted: str) -> bool:
    top = dotted.split(".")[0]
    return top in SCHEMA or any(top in registered_method(m).keys for m in registered_methods())


# ---- the checks: each returns a list of problems ----------------------------------------------------------

def dead_links(text, folder):
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (folder / target.split("#")[0]).resolve()
        if not path.exists():
            problems.append(f"dead link {target}")
    return problems


def missing_paths(text):
    problems = []
    for span in CODE_SPAN.findall(text):
        for token in span.split():
            token = token.rstrip(".,:;)").split("#")[0]
            if re.search(r"[<>*{}$]|\.\.\.", token) or "=" in token:
                continue
            first = token.split("/")[0]
            if (first in PROJECT_DIRS and "/" in token) or token in PROJECT_FILES:
                if not (ROOT / token).exists():
                    problems.append(f"no such file {token}")
    return problems


def commands(text):
    """Every command line shown (code blocks, one line per command with its continuations; code spans)."""
    lines = []
    for _, _, body in FENCE.findall(text):
        lines += re.sub(r"\\\n\s*", " ", body).splitlines()
    lines += CODE_SPAN.findall(text)
    for line in lines:
        for part in re.split(r"&&|\|\||;|\|", line):
            yield part.strip()


def _entry(tokens):
    """(command, subcommand, its arguments) of a command line's tokens, or None for another program."""
    for i, tok in enumerate(tokens):
        if tok in ("train.py", "eval.py", "predict.py") or tok.endswith(("/train.py", "/eval.py", "/predict.py")):
            return tok.split("/")[-1], "", tokens[i + 1:]
        if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("allspark."):
            rest = tokens[i + 2:]
            sub = rest[0] if rest and not rest[0].startswith("-") and tokens[i + 1] in SUBCOMMANDS else ""
            return tokens[i + 1], sub, rest
        if tok.startswith("scripts/") and tok.endswith(".sh"):
            return tok, "", tokens[i + 1:]
    return None


SUBCOMMANDS = ("allspark.tools.convert", "allspark.tools.splits")


def unknown_flags(text):
    problems = []
    for line in commands(text):
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        found = _entry(tokens)
        if found is None:
            continue
        command, sub, args = found
        if command.startswith("allspark.") and not (ROOT / (command.replace(".", "/") + ".py")).is_file():
            problems.append(f"no module {command}")
            continue
        known = flags_of(command, sub)
        for arg in args:
            flag = arg.split("=")[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*", flag) and flag not in known and flag != "--help":
                problems.append(f"{command}{' ' + sub if sub else ''}: unknown flag {flag}")
    return problems


def unknown_keys(text):
    problems = []
    for indent, lang, body in FENCE.findall(text):
        if lang != "yaml":
            continue
        data = yaml.safe_load(textwrap.dedent(body) if indent else body)
        if isinstance(data, dict):
            problems += [f"unknown config key {k}" for k in data if not known_key(k)]
    for line in commands(text):
        tokens = line.split()
        found = _entry(tokens)
        if found is None or not (found[0] in ("train.py", "eval.py", "predict.py") or found[0].endswith(".sh")):
            continue
        for arg in found[2]:
            m = re.fullmatch(r"([a-z_][a-z0-9_.]*)=\S*", arg)
            if m and not known_key(m.group(1)):
                problems.append(f"unknown config key {m.group(1)} (override {arg})")
    return problems


def config_table_problems(text):
    """The docs' key tables against the schema: rows '| `key` | `default` | ... |' of the schema table and
    '| `key` | methods | `default` | ... |' of the method table."""
    schema, method_keys = config_defaults()
    problems, seen_schema, seen_methods = [], {}, set()
    for line in text.splitlines():
        m = re.match(r"^\| `([a-z_]+)` \|(.*)\|\s*$", line)
        if not m:
            continue
        key, cells = m.group(1), [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
        if key in SCHEMA and not cells[0].startswith(("sup", "semi", "allspark", "unimatch")):
            seen_schema[key] = cells[0].strip("`")
        else:
            seen_methods.add((key, cells[1].strip("`"), tuple(c.strip() for c in cells[0].split(","))))
    for key, [(_, spec)] in schema.items():
        want = _render(spec.default, spec.required)
        if key not in seen_schema:
            problems.append(f"config table lacks {key}")
        elif seen_schema[key] != want:
            problems.append(f"config table: {key} default {seen_schema[key]!r}, the schema's {want!r}")
    problems += [f"config table lists {key}, which the schema lacks" for key in seen_schema if key not in SCHEMA]
    want_methods = {(k, d, tuple(ms)) for (k, d), ms in method_keys.items()}
    problems += [f"method key table lacks {k} for {', '.join(ms)} (default {d})" for k, d, ms in want_methods - seen_methods]
    problems += [f"method key table lists {k} for {', '.join(ms)} (default {d}), which the methods lack"
                 for k, d, ms in seen_methods - want_methods]
    return problems


# ---- the real docs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_the_docs_name_only_what_exists(path):
    text = path.read_text()
    problems = dead_links(text, path.parent) + missing_paths(text) + unknown_flags(text) + unknown_keys(text)
    assert problems == [], f"{path.relative_to(ROOT)}: {problems}"


def test_the_config_tables_list_exactly_the_schemas_keys_and_defaults():
    assert config_table_problems(CONFIG_TABLE.read_text()) == []


def test_the_readme_is_short_links_every_page_and_shows_the_papers_numbers_from_their_file():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert {p.name for p in DOCS[1:]} <= {t.split("/")[-1].split("#")[0] for t in LINK.findall(text)}
    assert results_table() in text


# ---- the checks catch what they are for -------------------------------------------------------------------

def test_a_dead_link_a_missing_file_an_unknown_flag_and_key_are_reported():
    text = "\n".join([
        "See [the guide](docs/nope.md) and `configs/pascal_allspark.yaml`, `configs/pascal_nope.yaml`.",
        "```bash", "python train.py --config c.yaml --labled-id-path l.txt --save-path s", "```",
        "`python -m allspark.summarize exp --plots c.png`, `sh scripts/train.sh 4 29500 pascal --seed 0,1`",
        "```yaml", "crop_size: 513", "crop_sise: 513", "```",
        "`sh scripts/train.sh 1 29500 pascal allspark 1464 epochs=2 epoch=2`",
    ])
    assert dead_links(text, ROOT) == ["dead link docs/nope.md"]
    assert missing_paths(text) == ["no such file configs/pascal_nope.yaml"]
    assert unknown_flags(text) == ["train.py: unknown flag --labled-id-path", "allspark.summarize: unknown flag --plots",
                                   "scripts/train.sh: unknown flag --seed"]
    assert unknown_keys(text) == ["unknown config key crop_sise", "unknown config key epoch (override epoch=2)"]


def test_a_config_table_missing_a_key_or_with_a_wrong_default_is_reported():
    text = CONFIG_TABLE.read_text()
    assert config_table_problems(text.replace("| `eval_flip` | `true` |", "| `eval_flip` | `false` |")) == [
        "config table: eval_flip default 'false', the schema's 'true'"]
    removed = re.sub(r"^\| `lr_scaling` \|.*\n", "", text, flags=re.M)
    assert config_table_problems(removed) == ["config table lacks lr_scaling"]
