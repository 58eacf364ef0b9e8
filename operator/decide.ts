// Decide (pure): from what the informers observed, what to apply, what to delete, and the status.
// No clock (the time is an argument), no API calls (STYLE 4).
//
// Rollout ("recreate per group", groups atomic): StatefulSets use OnDelete, so applying a new
// template replaces no pod by itself. The operator then deletes ALL old-revision pods of one group at
// once and the StatefulSet controller recreates them at the new revision together. A group is
// recreated right away when it is not serving anyway; a serving group only when every other group
// is serving, so with replicas > 1 at most one group is out of service at a time. A group serves —
// its front door is in the client Service's EndpointSlice — only when all of its ranks exist, run
// the same revision and are Ready; so a pipeline never mixes revisions, and one failing rank takes
// its whole group out of service until it is back. With replicas = 1 a spec change means downtime
// while the new ranks load (documented in the chart README).
import type { Condition, DistributedInference, DistributedInferenceStatus, StageStatus } from './api/types.js';
import {
  ANNOTATION_APPLIED, LABEL_GROUP, LABEL_REVISION, POD_INDEX_LABEL,
  canonicalJson, clientService, configMap, frontDoorSlice, groupStatefulSet, headlessService, names, podSelector, resolved, revision,
  type K8sObject, type ServingFrontDoor,
} from './builders.js';
import { isLoadingCandidate, type LoadProgress } from './load-progress.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Pod = { metadata: { name: string; uid?: string; labels?: Record<string, string>; annotations?: Record<string, string>; deletionTimestamp?: any }; status?: any };

export type Observed = {
  resource: DistributedInference;
  /** Owned StatefulSets (any group index, including ones scaled away). */
  statefulSets: K8sObject[];
  /** Rank pods of this resource. */
  pods: Pod[];
  /** `Kind/name` → the applied-hash annotation of what is in the cache now. */
  applied: Map<string, string | undefined>;
  /**
   * Pod name → load progress the rank reported on its /metrics (gathered while it loads, the last
   * answer kept after); pods missing here are unknown.
   */
  loadProgress?: Map<string, LoadProgress>;
};

export type Event = { type: 'Normal' | 'Warning'; reason: string; message: string };

export type Decision = {
  apply: K8sObject[];
  deleteStatefulSets: string[];
  deletePods: { name: string; uid?: string }[];
  status: DistributedInferenceStatus;
  /** True when status differs from what is stored (the only case it is written). */
  statusChanged: boolean;
  events: Event[];
  /** Reconcile again after this long (ranks are loading: keep their progress fresh). */
  requeueAfterMs?: number;
};

/** How often load progress is refreshed while a rank loads. */
export const LOAD_PROGRESS_REQUEUE_MS = 5000;

type RankPod = {
  name: string;
  uid?: string;
  group: number;
  rank: number;
  revision?: string;
  ready: boolean;
  deleting: boolean;
  ip?: string;
  failure?: string;
  loading: boolean;
  progress?: LoadProgress;
};

const FAILING_WAIT_REASONS = new Set(['CrashLoopBackOff', 'ErrImagePull', 'ImagePullBackOff', 'CreateContainerConfigError', 'CreateContainerError', 'InvalidImageName', 'RunContainerError']);

function num(s: string | undefined): number {
  const n = Number(s);
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : 0;
}

/** A rank's own account of why it is failing (its termination message), or the kubelet's. */
function failureOf(p: Pod): string | undefined {
  for (const cs of p.status?.containerStatuses ?? []) {
    const t = cs.state?.terminated ?? cs.lastState?.terminated;
    if (t && t.exitCode !== 0) {
      const why = (t.message ?? '').trim() || t.reason || 'no termination message';
      return `exited with code ${t.exitCode}: ${why}`;
    }
    const w = cs.state?.waiting;
    if (w && FAILING_WAIT_REASONS.has(w.reason)) return `${w.reason}: ${w.message ?? ''}`.trim();
  }
  if (p.status?.phase === 'Failed') return `pod failed: ${p.status?.message ?? p.status?.reason ?? 'no message'}`;
  return undefined;
}

function rankPod(p: Pod, progress: Map<string, LoadProgress>): RankPod {
  const labels = p.metadata.labels ?? {};
  const ordinal = labels[POD_INDEX_LABEL] ?? p.metadata.name.split('-').pop();
  const rp: RankPod = {
    name: p.metadata.name,
    uid: p.metadata.uid,
    group: num(labels[LABEL_GROUP]),
    rank: num(ordinal),
    revision: labels[LABEL_REVISION],
    ready: (p.status?.conditions ?? []).some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True'),
    deleting: Boolean(p.metadata.deletionTimestamp),
    ip: p.status?.podIP,
    failure: undefined as string | undefined,
    loading: isLoadingCandidate(p),
    progress: progress.get(p.metadata.name),
  };
  // A rank that failed once and is Ready again is healthy; its lastState is history.
  if (!rp.ready) rp.failure = failureOf(p);
  return rp;
}

type GroupState = { group: number; pods: RankPod[]; serving: boolean; current: boolean; stale: boolean };

function groupState(group: number, pods: RankPod[], worldSize: number, rev: string): GroupState {
  const live = pods.filter((p) => !p.deleting);
  const complete = live.length === worldSize && new Set(live.map((p) => p.rank)).size === worldSize && live.length === pods.length;
  const revisions = new Set(live.map((p) => p.revision));
  const serving = complete && revisions.size === 1 && live.every((p) => p.ready);
  return { group, pods, serving, current: serving && revisions.has(rev), stale: live.some((p) => p.revision !== rev) };
}

export function setCondition(conds: Condition[], next: Omit<Condition, 'lastTransitionTime'>, now: string): Condition[] {
  const old = conds.find((c) => c.type === next.type);
  const lastTransitionTime = old && old.status === next.status ? old.lastTransitionTime : now;
  return [...conds.filter((c) => c.type !== next.type), { ...next, lastTransitionTime }];
}

const conditionOrder = ['Ready', 'Progressing', 'Degraded', 'Reconciling', 'Stalled'];

export function decide(o: Observed, now: Date): Decision {
  const r = o.resource;
  const v = resolved(r);
  const rev = revision(r);
  const generation = r.metadata?.generation ?? 0;
  const pods = o.pods.map((p) => rankPod(p, o.loadProgress ?? new Map()));
  const byGroup = (g: number) => pods.filter((p) => p.group === g);
  const groups = Array.from({ length: v.replicas }, (_, g) => groupState(g, byGroup(g), v.worldSize, rev));

  // Rollout: recreate stale groups, one serving group at a time.
  const deletePods: { name: string; uid?: string }[] = [];
  const events: Event[] = [];
  let outOfService = groups.filter((g) => !g.serving).length;
  for (const g of groups) {
    if (!g.stale) continue;
    if (g.serving) {
      if (outOfService > 0) continue;
      outOfService++;
    }
    const old = g.pods.filter((p) => !p.deleting && p.revision !== rev);
    deletePods.push(...old.map((p) => ({ name: p.name, uid: p.uid })));
    events.push({ type: 'Normal', reason: 'RecreatingGroup', message: `Replacing all ${old.length} old ranks of group ${g.group} at once with revision ${rev}` });
  }
  const recreating = new Set(deletePods.map((p) => p.name));
  const serving: ServingFrontDoor[] = groups
    .filter((g) => g.serving && !g.pods.some((p) => recreating.has(p.name)))
    .flatMap((g) => g.pods.filter((p) => p.rank === 0 && p.ip).map((p) => ({ podName: p.name, ip: p.ip!, group: g.group })));

  const desired = [configMap(r), headlessService(r), clientService(r), ...groups.map((g) => groupStatefulSet(r, g.group)), frontDoorSlice(r, serving)];
  const apply = desired.filter((d) => o.applied.get(`${d.kind}/${d.metadata.name}`) !== d.metadata.annotations[ANNOTATION_APPLIED]);
  const deleteStatefulSets = o.statefulSets
    .filter((s) => num(s.metadata.labels?.[LABEL_GROUP]) >= v.replicas || s.metadata.labels?.[LABEL_GROUP] === undefined)
    .map((s) => s.metadata.name);

  // Status.
  const inGroups = pods.filter((p) => p.group < v.replicas);
  const readyAtRev = inGroups.filter((p) => p.ready && !p.deleting && p.revision === rev);
  const stages: StageStatus[] = Array.from({ length: v.pipelineStages }, (_, stage) => {
    const ofStage = inGroups.filter((p) => Math.floor(p.rank / v.tensorParallel) === stage && p.revision === rev && !p.deleting);
    return { stage, ranks: v.replicas * v.tensorParallel, readyRanks: ofStage.filter((p) => p.ready).length, ...stageLoad(ofStage, r.status?.stages?.find((s) => s.stage === stage)) };
  });
  const existing = new Set(o.statefulSets.map((s) => num(s.metadata.labels?.[LABEL_GROUP])));
  const readyReplicas = groups.filter((g) => g.current).length;
  const failures = inGroups.filter((p) => p.failure).sort((a, b) => a.group - b.group || a.rank - b.rank);
  const ready = readyReplicas === v.replicas && deleteStatefulSets.length === 0;
  const staleGroups = groups.filter((g) => g.stale).length;
  const wanted = v.replicas * v.worldSize;

  let reason: string;
  let message: string;
  if (ready) {
    [reason, message] = v.replicas === 0
      ? ['ScaledToZero', 'replicas is 0: no rank runs and the endpoint has no backend; scale up to serve']
      : ['AllGroupsReady', `all ${v.replicas} group(s) of ${v.worldSize} rank(s) serve revision ${rev}`];
  } else if (failures.length) {
    reason = 'RankFailed';
    message = failureMessage(failures, v.name);
  } else if (deleteStatefulSets.length) {
    [reason, message] = ['ScalingDown', `removing group(s) ${deleteStatefulSets.join(', ')} to reach ${v.replicas} replica(s)`];
  } else if (staleGroups) {
    [reason, message] = ['RollingOut', `${readyReplicas}/${v.replicas} group(s) serve revision ${rev}; ${staleGroups} group(s) still run an older revision and are replaced one whole group at a time`];
  } else if (inGroups.length < wanted) {
    [reason, message] = ['CreatingRanks', `${inGroups.length}/${wanted} rank pods exist; waiting for the StatefulSet controller to create the rest (check the StatefulSets' events if this persists, e.g. quota or admission)`];
  } else {
    const waiting = inGroups.filter((p) => !p.ready).map((p) => p.name).sort();
    const loaded = stages.reduce((s, x) => s + (x.loadedBytes ?? 0), 0);
    const total = stages.reduce((s, x) => s + (x.totalBytes ?? 0), 0);
    const progress = total > 0 ? `; ${loaded} of ${total} bytes loaded by the ranks that report` : '';
    [reason, message] = ['LoadingRanks', `${readyAtRev.length}/${wanted} ranks ready; waiting for ${waiting.slice(0, 3).join(', ')}${waiting.length > 3 ? ` and ${waiting.length - 3} more` : ''} to load their slices and reach their peers${progress}`];
  }

  const nowIso = now.toISOString().replace(/\.\d{3}Z$/, 'Z');
  let conds = r.status?.conditions ?? [];
  const set = (type: string, status: 'True' | 'False', why: string, msg: string) => {
    conds = setCondition(conds, { type, status, reason: why, message: msg, observedGeneration: generation }, nowIso);
  };
  set('Ready', ready ? 'True' : 'False', reason, message);
  set('Progressing', !ready && !failures.length ? 'True' : 'False', ready ? 'Complete' : reason, message);
  if (failures.length) set('Degraded', 'True', 'RankFailed', failureMessage(failures, v.name));
  else set('Degraded', 'False', 'RanksHealthy', 'no rank reports a failure');
  set('Reconciling', !ready && !failures.length ? 'True' : 'False', ready ? 'Complete' : reason, message);
  set('Stalled', failures.length ? 'True' : 'False', failures.length ? 'RankFailed' : 'NotStalled', failures.length ? failureMessage(failures, v.name) : 'progressing normally');
  conds = conds.filter((c) => conditionOrder.includes(c.type)).sort((a, b) => conditionOrder.indexOf(a.type) - conditionOrder.indexOf(b.type));

  const status: DistributedInferenceStatus = {
    observedGeneration: generation,
    revision: rev,
    replicas: Array.from(existing).filter((g) => g < v.replicas).length,
    readyReplicas,
    ranks: wanted,
    readyRanks: readyAtRev.length,
    selector: podSelector(r),
    layout: { pipelineStages: v.pipelineStages, tensorParallel: v.tensorParallel, worldSize: v.worldSize },
    stages,
    endpoint: `http://${names.client(v.name)}.${v.namespace}.svc:${v.httpPort}`,
    conditions: conds,
  };
  const statusChanged = canonicalJson(status) !== canonicalJson(r.status ?? {});
  const before = new Map((r.status?.conditions ?? []).map((c) => [c.type, c.status]));
  if (statusChanged) {
    if (ready && before.get('Ready') !== 'True') events.push({ type: 'Normal', reason, message });
    if (failures.length && before.get('Degraded') !== 'True') events.push({ type: 'Warning', reason: 'RankFailed', message: failureMessage(failures, v.name) });
  }
  const loading = inGroups.some((p) => p.loading && !p.failure);
  return { apply, deleteStatefulSets, deletePods, status, statusChanged, events, ...(loading ? { requeueAfterMs: LOAD_PROGRESS_REQUEUE_MS } : {}) };
}

/**
 * Bytes loaded / to load by the ranks of one stage: the sum of what each rank reported (a Ready rank
 * has loaded all of its slice, so it counts loaded = total); ranks whose progress is unknown add
 * nothing. When every rank of the stage is Ready and none has a known progress (e.g. the operator
 * restarted after they loaded), the last reported total stays, fully loaded, so a restart writes no
 * status.
 */
function stageLoad(ofStage: RankPod[], last: StageStatus | undefined): { loadedBytes: number; totalBytes: number } {
  const known = ofStage.filter((p) => p.progress);
  if (!known.length && ofStage.length && ofStage.every((p) => p.ready)) {
    return { loadedBytes: last?.totalBytes ?? 0, totalBytes: last?.totalBytes ?? 0 };
  }
  return {
    loadedBytes: known.reduce((s, p) => s + (p.ready ? p.progress!.total : p.progress!.loaded), 0),
    totalBytes: known.reduce((s, p) => s + p.progress!.total, 0),
  };
}

function failureMessage(failures: RankPod[], name: string): string {
  const f = failures[0];
  const more = failures.length > 1 ? ` (and ${failures.length - 1} more rank(s) failing)` : '';
  return `rank ${f.rank} of group ${f.group} (pod ${f.name}) ${f.failure}${more}; fix the spec or the checkpoint it names, then the rank restarts on its own (kubectl logs ${f.name}; kubectl describe dinf ${name})`;
}
