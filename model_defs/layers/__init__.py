"""Shared layers every family is written from."""
