/**
 * The IAM role a mover group's appliances run as. Trusted by the configured principal
 * (an IAM role/user/account of the site) and/or an IAM Roles Anywhere trust anchor (X.509
 * certificates on the appliance). It may only:
 * - take and answer tasks of its own group's Activity (GetActivityTask, SendTask*),
 * - read and write objects under the repositories' data prefixes and its registration
 *   record, read the repository key object and signed releases, and list the bucket (it
 *   lists the index, `index/`; and so a HEAD or GET of a missing object is a 404, not a 403),
 * - use the repositories' KMS keys through S3 (SSE-KMS) and decrypt the repository key.
 * No delete of any kind, no catalog, nothing else.
 */
import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { acknowledge, arnWildcardFinding } from './nag.ts';
import { Construct } from 'constructs';
import type { MoverGroupConfig } from '../../core/config.ts';
import { KMS_CONTEXT_PURPOSE } from '../../repository/keyring.ts';

export interface MoverIdentityProps {
  group: MoverGroupConfig;
  activity: sfn.IActivity;
  /**
   * The repositories' buckets and keys. `arnFinding`: how cdk-nag names the bucket's ARN in a
   * finding (the imported export's name in a site stack); default: the bucket's `<LogicalId.Arn>`.
   */
  repositories: { bucket: s3.IBucket; key: kms.IKey; arnFinding?: string }[];
}

/**
 * Object prefixes a mover writes: packs and index objects (format 2), manifests, its
 * registration record (core/mover-registry.ts), host configuration backups
 * (repository/host-config.ts: written, never read back by a mover), transfer progress
 * (contracts/progress.ts: written for the operator's view, never read), the endpoint records of the
 * exports and instant recoveries it serves (contracts/export-job.ts: where to connect while the
 * task runs; written, never read back), and chunk objects only when it replicates
 * a format-1 backup into a DR repository (backups write none). It reads the others, the
 * repository key and signed releases (core/release.ts) to update itself; it cannot write
 * a release.
 */
export const MOVER_WRITE_PREFIXES = ['packs/', 'index/', 'manifests/', 'movers/', 'chunks/', 'host-config/', 'progress/', 'exports/'] as const;
export const MOVER_READ_PREFIXES = ['chunks/', 'packs/', 'index/', 'manifests/', 'movers/', 'keys/', 'releases/'] as const;

/** The trust of a mover role: the configured principal, a Roles Anywhere trust anchor, or (neither) this account. */
export function moverTrust(group: MoverGroupConfig): { principal: iam.IPrincipal; rolesAnywhere?: string } {
  const principals: iam.IPrincipal[] = [];
  if (group.principal?.awsPrincipalArn) principals.push(new iam.ArnPrincipal(group.principal.awsPrincipalArn));
  const anchor = group.principal?.rolesAnywhereTrustAnchorArn;
  if (anchor) principals.push(new iam.ServicePrincipal('rolesanywhere.amazonaws.com').withConditions({ ArnEquals: { 'aws:SourceArn': anchor } }));
  if (principals.length === 0) principals.push(new iam.AccountRootPrincipal());
  return { principal: principals.length === 1 ? principals[0]! : new iam.CompositePrincipal(...principals), ...(anchor ? { rolesAnywhere: anchor } : {}) };
}

export class MoverIdentity extends Construct {
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: MoverIdentityProps) {
    super(scope, id);
    const { group } = props;
    const trust = moverTrust(group);
    this.role = new iam.Role(this, 'Role', {
      description: `Lifeboat mover group '${group.id}' (site ${group.site}): its Activity, repository objects, no delete, no catalog`,
      assumedBy: trust.principal,
      maxSessionDuration: Duration.hours(12),
    });
    if (trust.rolesAnywhere) {
      // Roles Anywhere also tags the session and sets the source identity from the certificate.
      this.role.assumeRolePolicy?.addStatements(
        new iam.PolicyStatement({
          actions: ['sts:TagSession', 'sts:SetSourceIdentity'],
          principals: [new iam.ServicePrincipal('rolesanywhere.amazonaws.com')],
          conditions: { ArnEquals: { 'aws:SourceArn': trust.rolesAnywhere } },
        }),
      );
    }

    const region = Stack.of(this).region;
    const statements = [
      new iam.PolicyStatement({
        sid: 'OwnActivityOnly',
        actions: ['states:GetActivityTask', 'states:SendTaskSuccess', 'states:SendTaskFailure', 'states:SendTaskHeartbeat'],
        resources: [props.activity.activityArn],
      }),
      new iam.PolicyStatement({
        sid: 'WriteRepositoryData',
        actions: ['s3:PutObject'],
        resources: props.repositories.flatMap((r) => MOVER_WRITE_PREFIXES.map((p) => r.bucket.arnForObjects(`${p}*`))),
      }),
      new iam.PolicyStatement({
        sid: 'ReadRepositoryData',
        actions: ['s3:GetObject'],
        resources: props.repositories.flatMap((r) => MOVER_READ_PREFIXES.map((p) => r.bucket.arnForObjects(`${p}*`))),
      }),
      // Movers list `index/` (repository/packs.ts RepositoryIndex.load). Not narrowed by an
      // s3:prefix condition: S3 answers a HEAD or GET of a missing key with 404 only to a
      // caller allowed s3:ListBucket on the bucket itself (a request without a prefix), so
      // a narrowed grant would turn every missing object (a replica's pack not copied yet,
      // a release not published) into 403 AccessDenied.
      new iam.PolicyStatement({
        sid: 'ListRepository',
        actions: ['s3:ListBucket'],
        resources: props.repositories.map((r) => r.bucket.bucketArn),
      }),
      new iam.PolicyStatement({
        sid: 'RepositoryObjectsEncryption',
        actions: ['kms:GenerateDataKey', 'kms:Decrypt'],
        resources: props.repositories.map((r) => r.key.keyArn),
        conditions: { StringEquals: { 'kms:ViaService': `s3.${region}.amazonaws.com` } },
      }),
      new iam.PolicyStatement({
        sid: 'UnwrapRepositoryKey',
        actions: ['kms:Decrypt'],
        resources: props.repositories.map((r) => r.key.keyArn),
        conditions: { StringEquals: { [`kms:EncryptionContext:${KMS_CONTEXT_PURPOSE}`]: 'repository-key' } },
      }),
    ];
    const policy = new iam.Policy(this, 'Policy', { statements });
    policy.attachToRole(this.role);
    acknowledge(
      policy,
      `Movers write objects whose names are not known in advance (random pack and index ids); access is limited to prefixes of the repository buckets: read ${MOVER_READ_PREFIXES.join(', ')}; write ${MOVER_WRITE_PREFIXES.join(', ')} (movers/: its registration record).`,
      ...props.repositories.flatMap((r) =>
        [...new Set([...MOVER_READ_PREFIXES, ...MOVER_WRITE_PREFIXES])].map((p) =>
          r.arnFinding ? `AwsSolutions-IAM5[Resource::${r.arnFinding}/${p}*]` : arnWildcardFinding(r.bucket, `/${p}*`),
        ),
      ),
    );
  }
}
