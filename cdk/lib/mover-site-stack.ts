/**
 * One stack per site: what each of the site's mover groups needs of its own — its Activity,
 * the IAM role its appliances assume (mover-identity.ts) and its "not polling" alarm — so the
 * control plane's stack holds nothing per group and no number of sites meets
 * CloudFormation's resource limit per stack.
 *
 * References run one way only, site → control plane, through CloudFormation exports: the
 * repositories' bucket and key ARNs under names of their own (`exportRepositories`, so cdk-nag's
 * findings on the mover policy can be acknowledged by name), the alarm topic through CDK's
 * automatic cross-stack reference. The control plane's workflows name each group's
 * Activity by its name (`<stack>-mover-<group>`, `sfn.Activity.fromActivityName`), which
 * creates no dependency on this stack: Step Functions resolves an activity task's ARN when
 * the task runs, so the control plane deploys first and a site's stack after it.
 */
import { CfnOutput, Fn, Stack, type StackProps } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sns from 'aws-cdk-lib/aws-sns';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct } from 'constructs';
import type { MoverGroupConfig } from '../../core/config.ts';
import { moverGroupNotPollingAlarm } from './monitoring.ts';
import { MoverIdentity } from './mover-identity.ts';

export interface MoverSiteStackProps extends StackProps {
  /** The control plane's stack name: activity names are `<it>-mover-<group>`. */
  controlPlane: string;
  site: string;
  /** The mover groups of this site (at least one). */
  groups: MoverGroupConfig[];
  /** The repositories the control plane's stack stores: the names of its exports of each bucket's and KMS key's ARN (`exportRepositories`). */
  repositories: { id: string; bucketArnExport: string; keyArnExport: string }[];
  /** The control plane's alarm topic. */
  alarmTopic: sns.ITopic;
}

/** The name of a mover group's Activity: the workflows and the site stack agree on it. */
export const moverActivityName = (controlPlane: string, group: string) => `${controlPlane}-mover-${group}`;

/**
 * Exports, under names of its own, each stored repository's bucket and key ARN from the control
 * plane's stack (`Stack.exportValue`), for the site stacks to import.
 */
export function exportRepositories(stack: Stack, stored: Record<string, { bucket: s3.IBucket; key: kms.IKey }>): MoverSiteStackProps['repositories'] {
  return Object.entries(stored).map(([id, r]) => {
    const bucketArnExport = `${stack.stackName}-repository-${id}-bucket-arn`;
    const keyArnExport = `${stack.stackName}-repository-${id}-key-arn`;
    stack.exportValue(r.bucket.bucketArn, { name: bucketArnExport });
    stack.exportValue(r.key.keyArn, { name: keyArnExport });
    return { id, bucketArnExport, keyArnExport };
  });
}

/** The stack name of a site's mover groups. */
export const moverSiteStackName = (controlPlane: string, site: string) => `${controlPlane}-site-${site}`;

/** The output key of a group's value (`ActivityArn<group id without punctuation>`), as the CLI reads it. */
export const groupOutputKey = (prefix: 'ActivityArn' | 'MoverRoleArn', group: string) => `${prefix}${group.replace(/[^A-Za-z0-9]/g, '')}`;

export class MoverSiteStack extends Stack {
  readonly activities: Record<string, sfn.Activity> = {};
  readonly moverRoles: Record<string, MoverIdentity> = {};

  constructor(scope: Construct, id: string, props: MoverSiteStackProps) {
    super(scope, id, props);
    if (props.groups.length === 0) throw new Error(`site '${props.site}' has no mover group: a site stack holds at least one`);
    const repositories = props.repositories.map((r) => ({
      bucket: s3.Bucket.fromBucketArn(this, `Repository-${r.id}`, Fn.importValue(r.bucketArnExport)),
      key: kms.Key.fromKeyArn(this, `RepositoryKey-${r.id}`, Fn.importValue(r.keyArnExport)),
      arnFinding: r.bucketArnExport,
    }));
    for (const g of props.groups) {
      const activity = new sfn.Activity(this, `MoverGroup-${g.id}`, { activityName: moverActivityName(props.controlPlane, g.id) });
      this.activities[g.id] = activity;
      this.moverRoles[g.id] = new MoverIdentity(this, `Mover-${g.id}`, { group: g, activity, repositories });
      moverGroupNotPollingAlarm(this, g.id, activity, props.alarmTopic);
      new CfnOutput(this, groupOutputKey('ActivityArn', g.id), {
        value: activity.activityArn,
        description: `Mover group '${g.id}': the mover's LIFEBOAT_ACTIVITY_ARN`,
      });
      new CfnOutput(this, groupOutputKey('MoverRoleArn', g.id), {
        value: this.moverRoles[g.id]!.role.roleArn,
        description: `Mover group '${g.id}': the role its movers assume`,
      });
    }
  }
}
