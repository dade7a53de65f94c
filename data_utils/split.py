from instag.cli import entry

entry("split")
