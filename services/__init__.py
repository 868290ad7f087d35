"""Rendezvous services: one sub-package per process type, plus ``common``."""
