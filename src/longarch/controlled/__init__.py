"""Controlled studies: small models of every family trained from scratch on the same data at the
same length, then evaluated at and past it."""
