"""Writes the flag tables of docs/cli.md from the tools' source in `keras_dino/tools/`.

One section per `keras-dino` command (the `TOOLS` table of keras_dino/cli.py), naming the
`examples/` script that runs the same tool.

The flags are read from the tools' source (`flags.DEFINE_*` calls, found with `ast`),
and the hyper-parameter flags of `keras-dino train` from the fields of `DINOConfig`
(`keras_dino/training/hparams.py`, which imports no Keras), so the reference cannot
drift from the code: tests/test_docs.py checks that docs/cli.md is what this script
writes.

    python scripts/cli_docs.py          # rewrites the part of docs/cli.md between markers
"""

import ast
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TOOLS = REPO / "keras_dino" / "tools"
CLI_MD = REPO / "docs" / "cli.md"
START, END = "<!-- cli:start -->", "<!-- cli:end -->"
BACKBONE_DEFINER = "define_backbone_flags"
# Helpers of common.py that define a group of flags in the tool that calls them.
SHARED_DEFINERS = ("define_image_flags", "define_eval_view_flags")
ALIAS_DEFINER = "define_deprecated_alias"
CONFIG_DEFINER = "_define_config_flags"  # keras_dino/tools/train.py: one flag per field
_KINDS = {str: "string", int: "integer", float: "float", bool: "boolean"}


def _text(node, constants):
    """The value of a flag argument as it reads in the docs."""
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.Name):
        return "{" + node.id + "}"
    try:
        value = ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.JoinedStr):  # an f-string: its literal parts, {...} kept
            return "".join(
                part.value if isinstance(part, ast.Constant) else str(_text(part.value, constants))
                for part in node.values)
        return ast.unparse(node)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def _flags(calls, constants):
    rows = []
    for call in calls:
        kind = call.func.attr[len("DEFINE_"):]
        name = _text(call.args[0], constants)
        default = _text(call.args[1], constants) if len(call.args) > 1 else None
        if kind == "enum":
            helptext = _text(call.args[3], constants) if len(call.args) > 3 else ""
            choices = _text(call.args[2], constants)
            helptext = f"{helptext} One of: {choices}."
        else:
            helptext = _text(call.args[2], constants) if len(call.args) > 2 else ""
        for keyword in call.keywords:
            if keyword.arg == "help":
                helptext = _text(keyword.value, constants)
            if keyword.arg == "default":
                default = _text(keyword.value, constants)
        rows.append((name, kind, default, " ".join(str(helptext).split())))
    return rows


def _define_calls(tree):
    calls = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr.startswith("DEFINE_")]
    return sorted(calls, key=lambda node: (node.lineno, node.col_offset))


def _common_definers(common):
    """`{helper name: FunctionDef}` of the flag-group helpers of common.py."""
    return {node.name: node for node in ast.walk(common)
            if isinstance(node, ast.FunctionDef) and node.name in SHARED_DEFINERS}


def _tool_rows(tree, definers):
    """The tool's flag rows in source order, the groups of common.py's helpers included."""
    rows = []
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    for call in sorted(calls, key=lambda node: (node.lineno, node.col_offset)):
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr.startswith("DEFINE_"):
            rows += _flags([call], {})
        elif isinstance(func, ast.Name) and func.id in definers:
            definer = definers[func.id]
            names = [a.arg for a in definer.args.args]
            constants = dict(zip(names[len(names) - len(definer.args.defaults):],
                                 (ast.literal_eval(d) for d in definer.args.defaults)))
            constants.update(zip(names[1:], (ast.literal_eval(a) for a in call.args[1:])))
            constants.update({k.arg: ast.literal_eval(k.value) for k in call.keywords})
            rows += _flags(_define_calls(definer), constants)
    return rows


def _aliases(tree):
    """`[(old, new)]`: the deprecated names the tool accepts."""
    return [(ast.literal_eval(node.args[1]), ast.literal_eval(node.args[2]))
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == ALIAS_DEFINER]
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE_")
            # a flag named in the source (not one of a loop over DINOConfig's fields)
            and node.args and isinstance(node.args[0], ast.Constant)]


def _backbone_call(tree):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == BACKBONE_DEFINER):
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return None


def _config_rows(tree):
    """The rows of the `DINOConfig` flags of a tool that defines them (else none)."""
    if not any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
               and node.func.id == CONFIG_DEFINER for node in ast.walk(tree)):
        return []
    notes = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_FLAG_NOTES" for t in node.targets):
            notes = ast.literal_eval(node.value)
    sys.path.insert(0, str(REPO))
    try:
        from keras_dino.training.hparams import DINOConfig, kind_of
    finally:
        sys.path.remove(str(REPO))
    rows = []
    for field in DINOConfig.settings():
        meta = field.metadata
        if not meta["flag"]:
            continue
        helptext = " ".join(filter(None, (meta["help"], notes.get(field.name))))
        kind = "enum" if meta["choices"] else _KINDS[kind_of(field)[0]]
        if meta["choices"]:
            helptext = f"{helptext} One of: {','.join(meta['choices'])}."
        rows.append((field.name, kind, meta.get("flag_default", field.default), helptext))
    return rows


def _backbone_defaults(common):
    for node in ast.walk(common):
        if isinstance(node, ast.FunctionDef) and node.name == BACKBONE_DEFINER:
            names = [a.arg for a in node.args.args]
            defaults = [ast.literal_eval(d) for d in node.args.defaults]
            return dict(zip(names[len(names) - len(defaults):], defaults)), node
    raise LookupError(f"keras_dino/tools/common.py has no {BACKBONE_DEFINER}")


def commands():
    """`{keras-dino command: keras_dino/tools/ module}`, read from keras_dino/cli.py's TOOLS."""
    tree = ast.parse((REPO / "keras_dino" / "cli.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "TOOLS" for t in node.targets):
            return {name: module for name, (module, _) in ast.literal_eval(node.value).items()}
    raise LookupError("keras_dino/cli.py has no TOOLS table")


def tool_scripts():
    """`{examples/ script name: keras_dino/tools/ module}`, read from the scripts' imports."""
    scripts = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("keras_dino.tools.")
                    and node.module != "keras_dino.tools.common"):
                scripts[path.name] = node.module.rpartition(".")[2]
    return scripts


def _table(rows):
    lines = ["| flag | type | default | description |", "| --- | --- | --- | --- |"]
    for name, kind, default, helptext in rows:
        shown = "" if default is None else "`\"\"`" if default == "" else f"`{default}`"
        helptext = helptext.replace("|", "\\|")
        lines.append(f"| `--{name}` | {kind} | {shown} | {helptext} |")
    return lines


def generated() -> str:
    """The markdown between the markers of docs/cli.md."""
    common = ast.parse((TOOLS / "common.py").read_text(encoding="utf-8"))
    defaults, definer = _backbone_defaults(common)
    definers = _common_definers(common)
    constants = dict(defaults)
    out = ["## Backbone flags", "",
           "The evaluation, feature and export tools load their backbone with these flags "
           "(`keras_dino/tools/common.py`); each tool's section gives its defaults.", ""]
    out += _table(_flags(_define_calls(definer), constants)) + [""]
    scripts = {module: script for script, module in tool_scripts().items()}
    for command, module in commands().items():
        tree = ast.parse((TOOLS / f"{module}.py").read_text(encoding="utf-8"))
        summary = (ast.get_docstring(tree) or "").split("\n\n")[0]
        out += [f"## keras-dino {command}", "", " ".join(summary.split()), ""]
        if module in scripts:
            out += [f"In a clone of the repository: `python examples/{scripts[module]}`.", ""]
        backbone = _backbone_call(tree)
        if backbone is not None:
            given = {**defaults, **backbone}
            out += [f"The [backbone flags](#backbone-flags), with `--arch={given['arch']}` "
                    f"and `--patch_size={given['patch_size']}` by default, and:", ""]
        out += _table(_config_rows(tree) + _tool_rows(tree, definers)) + [""]
        aliases = _aliases(tree)
        if aliases:
            names = ", ".join(f"`--{old}` (use `--{new}`)" for old, new in aliases)
            out += [f"Deprecated names, accepted for this release: {names}.", ""]
    return "\n".join(out)


def render(current: str) -> str:
    """`current` (docs/cli.md) with the generated part between its markers replaced."""
    head, _, rest = current.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise ValueError(f"docs/cli.md lacks the {START} marker")
    return f"{head}{START}\n{generated()}\n{END}{tail}"


if __name__ == "__main__":
    CLI_MD.write_text(render(CLI_MD.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {CLI_MD}", file=sys.stderr)
