package worker

import (
	"context"
	"fmt"

	"github.com/clusterd/clusterd/ipc"
)

// Jobs: the master's Dispatch sends a job to the ready worker with the
// fewest outstanding jobs; the worker's [JobHandler] answers it. A job whose
// worker dies before answering is sent again, to another worker, with its
// attempt number increased: delivery is at least once, so a handler should
// be idempotent or check [Job.Attempt].

// Job is a unit of work from the master.
type Job struct {
	Message
	// Attempt is 1 for the first delivery, and counts up each time the job
	// is sent again after losing its worker.
	Attempt int
}

// JobHandler does one job and returns its result (encoded with msgpack,
// as [Send] encodes its argument) or an error, sent to the master as an
// IPC error reply (an [*ipc.RemoteError]'s Code and Text, or code
// [ipc.CodeInternal] and the error's text); an error is returned to
// Dispatch's caller, not retried. ctx is done when the connection to the
// master ends.
type JobHandler func(ctx context.Context, job Job) (result any, err error)

// HandleJobs sets the function that does the master's jobs, replacing any
// earlier one; nil removes it. Jobs run concurrently, up to
// [MaxConcurrentRequests] at once together with requests; the master bounds
// how many it sends one worker (master.Options.JobQueue). A job that
// arrives while no handler is set is answered with an error of code
// [ipc.CodeUnsupported]: set it before [Ready]. Outside clusterd the
// handler is never called.
func HandleJobs(h JobHandler) {
	p := self()
	p.mu.Lock()
	p.jobHandler = h
	p.mu.Unlock()
}

// Submit sends job (any value msgpack encodes) to the master, which has
// another ready worker do it (as its Dispatch does, with redelivery) and
// returns that worker's result, or its error as an [*ipc.RemoteError]: code
// [ipc.CodeGone] when the job kept losing its worker, [ipc.CodeLimit] when
// the master's job queues are full and it fails fast. ctx bounds the wait.
// Outside clusterd it returns [ErrNotWorker].
func Submit(ctx context.Context, job any) (Message, error) {
	conn, err := self().workerConn()
	if err != nil {
		return Message{}, err
	}
	body, err := ipc.Encode(job)
	if err != nil {
		return Message{}, fmt.Errorf("worker: submit: %w", err)
	}
	m := &ipc.Message{Kind: ipc.KindJob, Body: ipc.EncodeJob(ipc.Job{Body: body})}
	r, err := conn.Call(ctx, m)
	if err != nil {
		return Message{}, fmt.Errorf("worker: submit: %w", err)
	}
	_ = r.CloseFDs() // a result carries none
	if r.Kind != ipc.KindResult {
		return Message{}, fmt.Errorf("worker: submit: master replied with a %s message, want a result", r.Kind)
	}
	return Message{body: r.Body}, nil
}

// runJob runs the job handler for m and answers with a KindResult or a
// KindError.
func runJob(ctx context.Context, conn *ipc.Conn, h JobHandler, m *ipc.Message) {
	var job ipc.Job
	if err := m.DecodeJob(&job); err != nil {
		replyKind(conn, m, ipc.KindResult, nil, &ipc.RemoteError{Code: ipc.CodeBadRequest, Text: err.Error()})
		return
	}
	v, err := h(ctx, Job{Message: Message{body: job.Body}, Attempt: job.Attempt})
	replyKind(conn, m, ipc.KindResult, v, err)
}
