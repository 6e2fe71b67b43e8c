/**
 * A stand-in mover for control-plane tests of large fleets: it polls a mover group's
 * activity over the Step Functions API, as a mover does, and answers every task at once
 * with the answer a real mover gave for one template VM: its snapshot's disks, and for each
 * disk the template's manifest sealed again under the new backup's id (a manifest is bound
 * to its name) and written to the repository, its chunks the packs the template stored. So
 * JoinSegments, Verify and Commit run for real; no disk is read and no chunk is sent: what
 * it tests is the workflow, not the data path. With `recovery`, it also answers a deep
 * verification's disk (the template manifest's chunks counted, nothing read back: intact)
 * and a replication's disk (the VM's manifest copied to the DR repository, whose packs a
 * real replication of the template put there, so VerifyReplica checks it for real).
 */
import { GetActivityTaskCommand, SendTaskFailureCommand, SendTaskSuccessCommand, type SFNClient } from '@aws-sdk/client-sfn';
import { encodeManifest, objectKeys, type RepositoryKeys } from '../../repository/format.ts';
import { decodeManifest } from './manifest.ts';
import type { DiskResult, MoverTask, SnapshotResult } from '../../contracts/jobs.ts';
import type { RecoveryTask } from '../../contracts/recovery-jobs.ts';
import { objectCrc32, type ObjectStore } from '../../core/object-store.ts';

export interface InstantMover {
  /** Tasks answered, by kind. */
  answered: Record<string, number>;
  stop(): Promise<void>;
}

export interface InstantTemplate {
  backupId: string;
  snapshot: SnapshotResult;
  disks: DiskResult[];
  /** The stack's repository and its keys (helpers/stack-keys.ts): this stand-in rewrites manifests with the test helpers. */
  repository: { store: ObjectStore; keys: RepositoryKeys };
}

/** The recovery tasks' side of the template: the DR repository, and VMs whose tasks fail (a mover's failure, as `Mover.Failed`). */
export interface InstantRecovery {
  dr?: ObjectStore;
  failVms?: ReadonlySet<string>;
}

export function startInstantMover(sfn: SFNClient, activityArn: string, template: InstantTemplate, pollers = 8, recovery: InstantRecovery = {}): InstantMover {
  const answered: Record<string, number> = {};
  let stopped = false;
  const abort = new AbortController();
  const { store } = template.repository;
  const repoKeys = template.repository.keys;
  const answer = async (t: MoverTask | RecoveryTask): Promise<unknown> => {
    if (t.task === 'snapshot') return template.snapshot;
    if (t.task === 'dispatch') {
      const d = template.disks.find((x) => x.diskId === t.disk.diskId);
      if (!d) throw new Error(`the template VM has no disk ${t.disk.diskId}`);
      const m = await decodeManifest(repoKeys, (await store.get(d.manifestKey))!, template.backupId, d.diskId, store);
      const sealed = await encodeManifest(repoKeys, { ...m, backupId: t.job.backupId });
      const manifestKey = objectKeys.manifest(t.job.backupId, d.diskId);
      await store.put(manifestKey, sealed, { crc32: objectCrc32(sealed) });
      return { ...d, manifestKey };
    }
    if (t.task === 'deepVerifyDisk' || t.task === 'replicateDisk') {
      const job = t.task === 'deepVerifyDisk' ? t.verify : t.replicate;
      if (recovery.failVms?.has(job.vmId)) throw new Error(`the stand-in mover fails VM '${job.vmId}' by request`);
      const d = template.disks.find((x) => x.diskId === t.disk.diskId);
      if (!d) throw new Error(`the template VM has no disk ${t.disk.diskId}`);
      const m = await decodeManifest(repoKeys, (await store.get(d.manifestKey))!, template.backupId, d.diskId, store);
      const chunks = new Set(m.chunks.filter((c) => c !== null)).size;
      if (t.task === 'deepVerifyDisk') return { diskId: d.diskId, chunksTotal: chunks, chunksChecked: chunks, bytesRead: 0, damaged: [], seconds: 0 };
      if (!recovery.dr) throw new Error('the stand-in mover was given no DR repository');
      const key = objectKeys.manifest(job.backupId, d.diskId);
      const manifest = (await store.get(key))!;
      await recovery.dr.put(key, manifest, { crc32: objectCrc32(manifest) });
      return { diskId: d.diskId, chunks, chunksCopied: 0, bytesCopied: manifest.length, seconds: 0 };
    }
    return null;
  };
  const poll = async () => {
    while (!stopped) {
      const got = await sfn.send(new GetActivityTaskCommand({ activityArn, workerName: 'instant-mover' }), { abortSignal: abort.signal });
      if (!got.taskToken || !got.input) continue;
      const task = JSON.parse(got.input) as MoverTask | RecoveryTask;
      answered[task.task] = (answered[task.task] ?? 0) + 1;
      try {
        await sfn.send(new SendTaskSuccessCommand({ taskToken: got.taskToken, output: JSON.stringify(await answer(task)) }));
      } catch (err) {
        await sfn.send(new SendTaskFailureCommand({ taskToken: got.taskToken, error: 'Mover.Failed', cause: (err as Error).message })).catch(() => {});
      }
    }
  };
  const running = Array.from({ length: pollers }, () =>
    poll().catch((err: unknown) => {
      if (!stopped) throw err;
    }),
  );
  return {
    answered,
    stop: async () => {
      stopped = true;
      abort.abort();
      await Promise.allSettled(running);
    },
  };
}
