/**
 * Routing an activity task to the mover group an execution names: a Choice on the
 * group's id with one task per group (its Activity), and a Fail state for a group the
 * deployment does not have. With one group there is no Choice, just the task.
 */
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct } from 'constructs';

export interface OnMoverGroupProps {
  /** Activities by mover group id. */
  activities: Record<string, sfn.IActivity>;
  /** JSONPath of the group id in the state's input, e.g. `$.restore.moverGroup`. */
  groupPath: string;
  /** Builds the task for one group (adds its own Retry and Catch). */
  task: (activity: sfn.IActivity, stateName: string) => sfn.TaskStateBase;
}

/** One task per group behind a Choice; the returned chain's `next` continues after whichever ran. */
export function onMoverGroup(scope: Construct, name: string, props: OnMoverGroupProps): sfn.Chain {
  const groups = Object.keys(props.activities);
  if (groups.length === 0) throw new Error(`${name}: no mover group activities to route to`);
  if (groups.length === 1) return sfn.Chain.start(props.task(props.activities[groups[0]!]!, name));
  const choice = new sfn.Choice(scope, `${name}OnMoverGroup`);
  for (const g of groups) choice.when(sfn.Condition.stringEquals(props.groupPath, g), props.task(props.activities[g]!, `${name} (${g})`));
  choice.otherwise(
    new sfn.Fail(scope, `${name}UnknownMoverGroup`, {
      error: 'Lifeboat.UnknownMoverGroup',
      cause: `the execution names a mover group this deployment does not have; known: ${groups.join(', ')}`,
    }),
  );
  return choice.afterwards();
}
