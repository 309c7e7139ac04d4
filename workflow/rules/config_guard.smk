# Config files are read as plain data, before anything uses them: a config is often someone
# else's file, and YAML in Snakemake can be more than data.
#
# - YTE templating (`__use_yte__: true`) evaluates Python expressions. The default config.yaml
#   is checked here before the `configfile:` directive loads it, so it is never evaluated.
#   A `--configfile` is loaded (and its templates evaluated) by Snakemake itself while it reads
#   its command line, before any workflow code runs: for those the run is refused before any
#   job starts, and the README says to check a foreign config for `__use_yte__` first.
# - YAML silently keeps the last of two equal keys; a duplicated model name is an error.
import os

import yaml

YTE_SWITCH = "__use_yte__"


class _PlainConfigLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ValueError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1}"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_PlainConfigLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def check_plain_config(path):
    """Refuse a config file that duplicates a key or turns on YTE templating."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_PlainConfigLoader)
        except (ValueError, yaml.YAMLError) as e:
            raise WorkflowError(f"{path}: {e}")
    if isinstance(data, dict) and YTE_SWITCH in data:
        raise WorkflowError(
            f"{path}: {YTE_SWITCH} turns on YTE templating, which evaluates Python expressions;"
            " llama2bin configs are plain YAML: remove the key"
        )


for _configfile in workflow.overwrite_configfiles or ["config.yaml"]:
    if os.path.exists(_configfile):  # a missing file is Snakemake's own error
        check_plain_config(_configfile)
