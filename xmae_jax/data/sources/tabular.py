"""Placeholder while the reader is written."""
DESCRIPTION = "tabular"
OPTIONS = ()


def add_arguments(parser):
  del parser
FORMAT = True
