#!/usr/bin/env bash
# The fault suite: see fault-suite/run.sh (usage: ./fault-suite.sh --help).
exec bash "$(dirname "${BASH_SOURCE[0]}")/fault-suite/run.sh" "$@"
