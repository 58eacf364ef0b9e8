/**
 * V8 flags every rank process runs with: `shardserve up` spawns its ranks with them, and the image's
 * `shardserve` command (runtime-image/launcher.sh) passes the same ones to `shardserve rank` (a test
 * holds the two equal). They go on node's command line: NODE_OPTIONS does not accept them.
 *
 * `--initial-old-space-size=128` keeps V8's old-generation allocation limit at 128 MiB or more.
 * A rank's heap is small (about 20 MiB live), but every request allocates several activation-sized
 * ArrayBuffers outside it (received chunks, the joined message, the session's outputs). V8 counts
 * external memory allocated since the last mark-compact against the old generation's limit, which
 * for a 20 MiB heap sits near 40 MiB; a rank passing 64 KiB activations reached it every few dozen
 * requests and ran a full mark-compact every 35 to 50 ms, for as long as traffic lasted (seen with
 * --trace-gc: "Mark-Compact 20.8 -> 19.6 MB ... finalize incremental marking via task", 200 to 480
 * of them in 6,000 requests). With the floor, the same traffic runs 2 to 9 mark-compacts; measured
 * on the stage-hop network (a 64 KiB activation, 2 stages): CPU per request of the front-door rank
 * 1.9 → 0.7 ms, throughput at concurrency 8 about twice (666-734 → 1297-1499 requests/s), for
 * 30-40 MB more resident memory per rank.
 *
 * `--expose-gc` lets the rank collect garbage at the two moments it matters (see rank.ts): before
 * onnxruntime copies the stage's weights and right after, when the checkpoint slice's buffers become
 * garbage. A 257 MiB stage: peak resident memory 1236 → 730 MiB, 1172 → 404 MiB once loaded
 * (together with passing the weights in memory, see core/onnx/bind.ts).
 */
export const RANK_NODE_FLAGS: readonly string[] = ['--initial-old-space-size=128', '--expose-gc'];
