"""Placeholder while the reader is written."""
DESCRIPTION = "wfdb"
OPTIONS = ()


def add_arguments(parser):
  del parser
