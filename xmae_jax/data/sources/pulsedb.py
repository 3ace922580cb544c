"""Placeholder while the reader is written."""
DESCRIPTION = "pulsedb"
OPTIONS = ()


def add_arguments(parser):
  del parser
