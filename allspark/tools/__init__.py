"""Command-line tools, one layer above the library (which never imports them): ``python -m allspark.tools.<name>``.

- ``benchmark``: step time, memory and host synchronisations of a config's training step and eval forward;
- ``check_data``: a dataset against its split lists;
- ``convert``: the official downloads' annotations into the masks the lists expect;
- ``splits``: split lists for a dataset of your own;
- ``toy``: the built-in toy dataset.
"""
