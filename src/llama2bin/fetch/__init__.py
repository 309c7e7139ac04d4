"""Download or locate a model's checkpoint, reproducibly, and record what was obtained.

- ``spec``: what to fetch (FetchSpec, the one place a source is validated) and the retry policy.
- ``hub``: Hugging Face Hub repos and huggingface.co file URLs, through huggingface_hub.
- ``url``: any other http(s) URL, with the few guarantees the library cannot give there.
- ``record``: sha256 of regular files only, directory walks that cannot loop, SOURCE.json.
- ``step``: the fetch step itself, which writes DEST/SOURCE.json last.
"""

from .record import FileRecord, checkpoint_from_source_json, read_source_json, sha256_file
from .spec import (
    HF_HOSTS,
    SNAPSHOT_DIR,
    SOURCE_JSON,
    FetchSpec,
    HubFile,
    RetryPolicy,
    check_model_name,
    config_source,
    default_dest,
    hub_file_of_url,
)
from .step import FetchResult, fetch
from .url import Downloaded, download_url

__all__ = [
    "HF_HOSTS",
    "SNAPSHOT_DIR",
    "SOURCE_JSON",
    "Downloaded",
    "FetchResult",
    "FetchSpec",
    "FileRecord",
    "HubFile",
    "RetryPolicy",
    "check_model_name",
    "checkpoint_from_source_json",
    "config_source",
    "default_dest",
    "download_url",
    "fetch",
    "hub_file_of_url",
    "read_source_json",
    "sha256_file",
]
