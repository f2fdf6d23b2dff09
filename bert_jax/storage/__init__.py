"""Where bytes go: `paths` (local paths and gs:// URLs, every file we open,
list, rename or delete), `outputs` (files that are never destroyed or
half-written), `workdir_lock` and `run_dir` (one run per workdir),
`json_input` (JSON read with one-line errors), `shared_data` (the tests'
datasets)."""
