import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Prometheus metrics of one rank, in their own registry (no module-level singletons). */
export class RankMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'protocol' | 'code'>;
  readonly requestSeconds: Histogram<'protocol'>;
  readonly stageSeconds: Histogram<'stage'>;
  readonly hopSeconds: Histogram<'to_stage'>;
  readonly inflight: Gauge;
  readonly loadedBytes: Gauge;
  readonly totalBytes: Gauge;
  readonly ready: Gauge;

  constructor(labels: { rank: number; group: number; stage: number }, opts: { defaultMetrics?: boolean } = {}) {
    this.registry.setDefaultLabels({ rank: String(labels.rank), group: String(labels.group) });
    const registers = [this.registry];
    this.requests = new Counter({ name: 'shardserve_requests_total', help: 'Inference requests answered, by protocol and result code', labelNames: ['protocol', 'code'], registers });
    this.requestSeconds = new Histogram({ name: 'shardserve_request_duration_seconds', help: 'End-to-end inference latency at the front door', labelNames: ['protocol'], buckets: LATENCY_BUCKETS, registers });
    this.stageSeconds = new Histogram({ name: 'shardserve_stage_compute_seconds', help: 'Time one pipeline stage spends running its ONNX session per request', labelNames: ['stage'], buckets: LATENCY_BUCKETS, registers });
    this.hopSeconds = new Histogram({ name: 'shardserve_stage_hop_seconds', help: 'Round trip to the next stage (its compute and everything after it included)', labelNames: ['to_stage'], buckets: LATENCY_BUCKETS, registers });
    this.inflight = new Gauge({ name: 'shardserve_inflight_requests', help: 'Requests in flight on this rank', registers });
    this.loadedBytes = new Gauge({ name: 'shardserve_load_bytes_done', help: 'Bytes of this rank\'s checkpoint slice loaded so far', registers });
    this.totalBytes = new Gauge({ name: 'shardserve_load_bytes_total', help: 'Bytes of this rank\'s checkpoint slice to load', registers });
    this.ready = new Gauge({ name: 'shardserve_ready', help: '1 when this rank (rank 0: the whole group) is ready to serve', registers });
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
    void labels.stage;
  }
}
