/**
 * Step Functions' task-token callbacks for the functions, over `@aws-sdk/client-sfn`: the
 * adapter behind slot-queue.ts's narrow TaskCallbacks. A token Step Functions refuses as
 * dead is an answer (false), not an error: the waiter's execution stopped or its wait
 * timed out.
 */
import { SendTaskSuccessCommand, type SFNClient } from '@aws-sdk/client-sfn';
import type { TaskCallbacks } from '../backup/slot-queue.ts';

/** SendTaskSuccess's refusals of a token whose task is over. */
const DEAD_TOKEN = new Set(['TaskTimedOut', 'TaskDoesNotExist', 'InvalidToken']);

export function sfnTaskCallbacks(client: () => SFNClient): TaskCallbacks {
  return {
    async succeed(token, output) {
      try {
        await client().send(new SendTaskSuccessCommand({ taskToken: token, output: JSON.stringify(output) }));
        return true;
      } catch (err) {
        if (DEAD_TOKEN.has((err as Error).name)) return false;
        throw err;
      }
    },
  };
}
