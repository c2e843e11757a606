"""Plumbing shared by every stage of the project: files, configs, tables, logging, CLIs.

It imports nothing from ``hear_ced``, ``distill``, ``eval`` or ``bench``, so
each of them can build on it without an import cycle.
"""
