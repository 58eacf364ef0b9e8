import { describe, expect, it } from 'vitest';
import type { DistributedInference } from './api/types.js';
import { ANNOTATION_APPLIED, groupStatefulSet, revision, type K8sObject } from './builders.js';
import { decide, LOAD_PROGRESS_REQUEUE_MS, type Observed, type Pod } from './decide.js';
import { pod, resource } from './testing/wrappers.js';

const T0 = new Date('2026-11-27T10:00:00Z');
const T1 = new Date('2026-11-27T10:05:00Z');

/** The cache after the previous decision was applied: every desired object present with its hash. */
function observed(r: DistributedInference, pods: Pod[], extraSts: K8sObject[] = []): Observed {
  const first = decide({ resource: r, statefulSets: [], pods: [], applied: new Map() }, T0);
  const applied = new Map(first.apply.map((o) => [`${o.kind}/${o.metadata.name}`, o.metadata.annotations[ANNOTATION_APPLIED] as string]));
  const statefulSets = [...first.apply.filter((o) => o.kind === 'StatefulSet'), ...extraSts];
  return { resource: r, statefulSets, pods, applied };
}

const rankPods = (r: DistributedInference, group: number, ready: boolean, rev = revision(r), n = 4) =>
  Array.from({ length: n }, (_, k) => (ready ? pod('llm', group, k, rev).ready() : pod('llm', group, k, rev)).build());

const llm = (replicas = 1) => resource('llm', 'ns').layout(2, 2).replicas(replicas).defaulted();
const cond = (d: ReturnType<typeof decide>, type: string) => d.status.conditions!.find((c) => c.type === type)!;

describe('decide', () => {
  it('a new resource: applies every owned object once and reports CreatingRanks', () => {
    const d = decide({ resource: llm().build(), statefulSets: [], pods: [], applied: new Map() }, T0);
    expect(d.apply.map((o) => `${o.kind}/${o.metadata.name}`)).toEqual([
      'ConfigMap/llm-config', 'Service/llm-ranks', 'Service/llm', 'StatefulSet/llm-g0', 'EndpointSlice/llm-frontdoor',
    ]);
    expect(d.apply.at(-1)!.endpoints).toEqual([]);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'False', reason: 'CreatingRanks', lastTransitionTime: '2026-11-27T10:00:00Z' });
    expect(cond(d, 'Reconciling')).toMatchObject({ status: 'True', reason: 'CreatingRanks' });
    expect(d.status).toMatchObject({ observedGeneration: 1, replicas: 0, readyReplicas: 0, ranks: 4, readyRanks: 0, selector: 'inference.shardserve.io/name=llm', endpoint: 'http://llm.ns.svc:8000' });
  });

  it('every rank ready: Ready, the front door in the EndpointSlice, per-stage counts', () => {
    const r = llm().build();
    const d = decide(observed(r, rankPods(r, 0, true)), T1);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'True', reason: 'AllGroupsReady' });
    expect(cond(d, 'Reconciling').status).toBe('False');
    expect(cond(d, 'Stalled').status).toBe('False');
    expect(d.apply.map((o) => o.kind)).toEqual(['EndpointSlice']);
    expect(d.apply[0].endpoints.map((e: { targetRef: { name: string } }) => e.targetRef.name)).toEqual(['llm-g0-0']);
    expect(d.status.stages).toEqual([
      { stage: 0, ranks: 2, readyRanks: 2, loadedBytes: 0, totalBytes: 0 },
      { stage: 1, ranks: 2, readyRanks: 2, loadedBytes: 0, totalBytes: 0 },
    ]);
    expect(d.events).toEqual([{ type: 'Normal', reason: 'AllGroupsReady', message: `all 1 group(s) of 4 rank(s) serve revision ${revision(r)}` }]);
  });

  it('nothing changed: no apply, no status write, no event', () => {
    const r = llm().build();
    const o = observed(r, rankPods(r, 0, true));
    const first = decide(o, T0);
    const slice = first.apply[0];
    o.applied.set(`EndpointSlice/${slice.metadata.name}`, slice.metadata.annotations[ANNOTATION_APPLIED]);
    r.status = first.status;
    const again = decide(o, T1);
    expect(again).toMatchObject({ apply: [], deletePods: [], deleteStatefulSets: [], statusChanged: false, events: [] });
  });

  it('lastTransitionTime moves only when a condition flips', () => {
    const r = llm().build();
    r.status = decide(observed(r, rankPods(r, 0, false)), T0).status;
    const d = decide(observed(r, rankPods(r, 0, false).slice(0, 3).concat(pod('llm', 0, 3, revision(r)).ready().build())), T1);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'False', lastTransitionTime: '2026-11-27T10:00:00Z' });
    const readyNow = decide(observed(r, rankPods(r, 0, true)), T1);
    expect(cond(readyNow, 'Ready').lastTransitionTime).toBe('2026-11-27T10:05:00Z');
    expect(cond(readyNow, 'Degraded').lastTransitionTime).toBe('2026-11-27T10:00:00Z');
  });

  it("a failing rank's termination message becomes Degraded/Stalled and its group stops serving", () => {
    const r = llm().build();
    const pods = rankPods(r, 0, true);
    pods[2] = pod('llm', 0, 2, revision(r)).terminated(2, 'strategy has 4 stages, spec asks for 2').build();
    const d = decide(observed(r, pods), T1);
    expect(cond(d, 'Degraded')).toMatchObject({
      status: 'True', reason: 'RankFailed',
      message: 'rank 2 of group 0 (pod llm-g0-2) exited with code 2: strategy has 4 stages, spec asks for 2; fix the spec or the checkpoint it names, then the rank restarts on its own (kubectl logs llm-g0-2; kubectl describe dinf llm)',
    });
    expect(cond(d, 'Stalled')).toMatchObject({ status: 'True', reason: 'RankFailed' });
    expect(cond(d, 'Ready')).toMatchObject({ status: 'False', reason: 'RankFailed' });
    expect(d.apply.find((o) => o.kind === 'EndpointSlice')?.endpoints ?? 'unchanged').toEqual('unchanged');
    expect(d.events.map((e) => [e.type, e.reason])).toEqual([['Warning', 'RankFailed']]);
  });

  it('a spec change replaces one whole group at a time while the other keeps serving', () => {
    const old = llm(2).build();
    const oldRev = revision(old);
    const r = llm(2).image('shardserve/runtime:0.2.0').generation(2).build();
    const pods = [...rankPods(old, 0, true, oldRev), ...rankPods(old, 1, true, oldRev)];
    const o = observed(old, pods);
    const d = decide({ ...o, resource: r }, T1);
    expect(d.apply.map((x) => `${x.kind}/${x.metadata.name}`)).toEqual(['StatefulSet/llm-g0', 'StatefulSet/llm-g1', 'EndpointSlice/llm-frontdoor']);
    expect(d.deletePods.map((p) => p.name)).toEqual(['llm-g0-0', 'llm-g0-1', 'llm-g0-2', 'llm-g0-3']);
    expect(d.apply[2].endpoints.map((e: { targetRef: { name: string } }) => e.targetRef.name)).toEqual(['llm-g1-0']);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'False', reason: 'RollingOut' });

    // Group 0 came back at the new revision and is ready: now group 1 goes, all at once.
    const next = decide({ ...o, resource: r, pods: [...rankPods(r, 0, true), ...rankPods(old, 1, true, oldRev)] }, T1);
    expect(next.deletePods.map((p) => p.name)).toEqual(['llm-g1-0', 'llm-g1-1', 'llm-g1-2', 'llm-g1-3']);
  });

  it('a group whose ranks run different revisions never serves', () => {
    const r = llm().build();
    const pods = rankPods(r, 0, true);
    pods[3] = pod('llm', 0, 3, 'oldrevisio').ready().build();
    const d = decide(observed(r, pods), T1);
    expect(d.deletePods.map((p) => p.name)).toEqual(['llm-g0-3']);
    const slice = d.apply.find((o) => o.kind === 'EndpointSlice');
    expect(slice === undefined || slice.endpoints.length === 0).toBe(true);
    expect(d.status.readyReplicas).toBe(0);
  });

  it('scaling down deletes whole groups; scaling up adds StatefulSets', () => {
    const r = llm(1).build();
    const extra = groupStatefulSet(llm(2).build(), 1);
    const d = decide(observed(r, rankPods(r, 0, true), [extra]), T1);
    expect(d.deleteStatefulSets).toEqual(['llm-g1']);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'False', reason: 'ScalingDown' });
    const up = decide(observed(llm(1).build(), []), T1);
    const up3 = decide({ ...observed(llm(1).build(), []), resource: llm(3).build() }, T1);
    expect(up.apply.filter((o) => o.kind === 'StatefulSet')).toEqual([]);
    expect(up3.apply.filter((o) => o.kind === 'StatefulSet').map((o) => o.metadata.name)).toEqual(['llm-g1', 'llm-g2']);
  });

  it('load progress per stage sums what the loading ranks reported, and asks to be run again while they load', () => {
    const r = llm().build();
    const rev = revision(r);
    const pods = [0, 1, 2, 3].map((k) => pod('llm', 0, k, rev).loading().build());
    const loadProgress = new Map(pods.map((p, k) => [p.metadata.name, { loaded: 100 * (k + 1), total: 1000 }]));
    const d = decide({ ...observed(r, pods), loadProgress }, T1);
    expect(d.status.stages).toEqual([
      { stage: 0, ranks: 2, readyRanks: 0, loadedBytes: 300, totalBytes: 2000 },
      { stage: 1, ranks: 2, readyRanks: 0, loadedBytes: 700, totalBytes: 2000 },
    ]);
    expect(d.requeueAfterMs).toBe(LOAD_PROGRESS_REQUEUE_MS);
    expect(cond(d, 'Ready')).toMatchObject({ reason: 'LoadingRanks', message: '0/4 ranks ready; waiting for llm-g0-0, llm-g0-1, llm-g0-2 and 1 more to load their slices and reach their peers; 1000 of 4000 bytes loaded by the ranks that report' });
  });

  const progressCases: Array<[string, (r: DistributedInference) => { pods: Pod[]; progress: [string, number, number][]; last?: [number, number][] }, [number, number][], boolean]> = [
    ['a rank whose progress is unknown adds nothing (its stage shows what the others reported)', (r) => ({
      pods: [0, 1, 2, 3].map((k) => pod('llm', 0, k, revision(r)).loading().build()),
      progress: [['llm-g0-0', 50, 100]],
    }), [[50, 100], [0, 0]], true],
    ['a Ready rank counts its whole slice as loaded', (r) => ({
      pods: [pod('llm', 0, 0, revision(r)).ready().build(), pod('llm', 0, 1, revision(r)).loading().build(), ...rankPods(r, 0, true).slice(2)],
      progress: [['llm-g0-0', 70, 100], ['llm-g0-1', 10, 100]],
    }), [[110, 200], [0, 0]], true],
    ['every rank of a stage Ready and none known (operator restarted): the last reported total stays, fully loaded', (r) => ({
      pods: rankPods(r, 0, true),
      progress: [],
      last: [[150, 200], [400, 400]],
    }), [[200, 200], [400, 400]], false],
    ['nothing loading (pending pods): no requeue', (r) => ({
      pods: rankPods(r, 0, false),
      progress: [],
    }), [[0, 0], [0, 0]], false],
    ['a crash-looping rank is not loading: no requeue for it', (r) => ({
      pods: [pod('llm', 0, 0, revision(r)).terminated(1, 'boom').build()],
      progress: [],
    }), [[0, 0], [0, 0]], false],
  ];
  it.each(progressCases)('%s', (_name, make, want, requeue) => {
    const r = llm().build();
    const { pods, progress, last } = make(r);
    if (last) r.status = { stages: last.map(([l, t], stage) => ({ stage, ranks: 2, readyRanks: 2, loadedBytes: l, totalBytes: t })) };
    const loadProgress = new Map(progress.map(([n, loaded, total]) => [n, { loaded, total }]));
    const d = decide({ ...observed(r, pods), loadProgress }, T1);
    expect(d.status.stages!.map((s) => [s.loadedBytes, s.totalBytes])).toEqual(want);
    expect(d.requeueAfterMs).toBe(requeue ? LOAD_PROGRESS_REQUEUE_MS : undefined);
  });

  it('replicas 0 is Ready (ScaledToZero) so kstatus reports Current', () => {
    const d = decide(observed(llm(0).build(), []), T1);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'True', reason: 'ScaledToZero' });
  });
});
