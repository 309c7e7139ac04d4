# Config files are read as plain data, before anything uses them: a config is often someone
# else's file, and YAML in Snakemake can be more than data (README "Security").
#
# - YTE templating (`__use_yte__: true`) evaluates Python expressions. The default config.yaml
#   is checked here before the `configfile:` directive loads it, so it is never evaluated.
#   A `--configfile` is loaded (and its templates evaluated) by Snakemake itself while it reads
#   its command line, before any workflow code runs: for those the run is refused before any
#   job starts, and the README says to check a foreign config for `__use_yte__` first.
# - YAML silently keeps the last of two equal keys; a duplicated model name is an error.
# - YAML anchors and aliases let a 1 KB file stand for billions of values, and the schema
#   validation (or the message of its error) walks them expanded: every config is bounded in
#   depth and in expanded size first, by safe_io.check_plain_data, which visits each distinct
#   object once. Python tags (`!!python/name:`) are refused by the safe loader.
# Every refusal is one `llama2bin: error:` line naming the file and the key.
import os

from llama2bin.errors import Llama2binError
from llama2bin.safe_io import check_plain_data, load_plain_yaml

YTE_SWITCH = "__use_yte__"
CONFIG_FILES = [str(p) for p in workflow.overwrite_configfiles] or ["config.yaml"]
CONFIG_NAME = ", ".join(CONFIG_FILES)  # what a message about the loaded config names


def config_error(message):
    return WorkflowError(f"llama2bin: error: {message}")


def check_plain_config(path):
    """Refuse a config file that is not bounded plain YAML, duplicates a key or turns on YTE."""
    try:
        data = load_plain_yaml(path)
    except Llama2binError as e:
        raise config_error(e)
    if not isinstance(data, dict):
        raise config_error(
            f"{path}: a config is a mapping of keys (models:, versions:, ...)"
        )
    if YTE_SWITCH in data:
        raise config_error(
            f"{path}: {YTE_SWITCH} turns on YTE templating, which evaluates Python expressions;"
            " llama2bin configs are plain YAML: remove the key"
        )


def check_config_schema(config, schema_path):
    """One line naming the first field the schema refuses (Snakemake's own message spans a
    screen and renders the whole config). The config is already bounded by check_plain_data.
    """
    import yaml
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or "top level"
        message = " ".join(error.message.split())
        raise config_error(f"{CONFIG_NAME}: {field}: {message:.300}")


for _configfile in CONFIG_FILES:
    if os.path.exists(_configfile):  # a missing file is Snakemake's own error
        check_plain_config(_configfile)
# What Snakemake has merged so far (--configfile files, --config values), by identity: cheap.
try:
    check_plain_data(config, CONFIG_NAME)
except Llama2binError as _e:
    raise config_error(_e)
