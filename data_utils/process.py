from instag.cli import entry

entry("process")
