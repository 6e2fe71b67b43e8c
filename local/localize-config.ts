/** The deployment configuration as the embedded stack runs it on one machine. */
import { join } from 'node:path';
import type { StorageEndpoint } from '../contracts/endpoints.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { LOCAL_REGION } from './asl.ts';

/**
 * The configuration as one machine runs it: a repository's other endpoint becomes the
 * local s3rver serving it (same bucket, path style, its checksum setting), and absolute
 * folders on a site's movers (a standby replica's) move under `<dataDir>/sites/<site>/`,
 * since every site's movers share this machine. Nothing else changes.
 */
export function localizeConfig(config: LifeboatConfig, dataDir: string, localUrl: (e: StorageEndpoint) => string): LifeboatConfig {
  const siteOf = (group: string) => config.moverGroups.find((g) => g.id === group)?.site ?? group;
  return {
    ...config,
    repositories: config.repositories.map((r) => ({
      ...r,
      ...(r.endpoint
        ? {
            endpoint: {
              url: localUrl(r.endpoint),
              region: LOCAL_REGION,
              pathStyle: true,
              ...(r.endpoint.checksums ? { checksums: r.endpoint.checksums } : {}),
            },
          }
        : {}),
      ...(r.replication?.standbyPath
        ? { replication: { ...r.replication, standbyPath: join(dataDir, 'sites', siteOf(r.replication.moverGroup), r.replication.standbyPath) } }
        : {}),
    })),
  };
}
