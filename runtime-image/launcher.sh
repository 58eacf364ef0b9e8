#!/bin/sh
# The image's `shardserve` command (/usr/local/bin/shardserve, see Dockerfile). A rank runs with the
# V8 flags of runtime-image/node-flags.ts (NODE_OPTIONS does not accept them; a test holds the two
# equal); every other command (the operator, configured by its own NODE_OPTIONS) runs plain.
# exec: node is the container's PID 1 and gets its signals.
if [ "$1" = rank ]; then
  exec node --initial-old-space-size=128 --expose-gc /app/bin/shardserve.mjs "$@"
fi
exec node /app/bin/shardserve.mjs "$@"
