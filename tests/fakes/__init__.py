"""Fakes of services outside this machine: the Anthropic Messages API and Voxtral."""
