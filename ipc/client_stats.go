//go:build linux

package ipc

// ClientStats are counters of a Client: what it did that no call's
// result tells. Each field is read atomically; the struct as a whole is
// not a consistent snapshot.
type ClientStats struct {
	// CancelsSent counts the cancel records written to the server for
	// calls abandoned after their request went out (FeatureCancel).
	CancelsSent uint64
	// CancelsDropped counts the cancels never sent: MaxQueuedCancels
	// were already waiting for the request ring. Their handlers ran (or
	// run) for nobody; their calls had already failed with their
	// context's error.
	CancelsDropped uint64
	// DispatchTooLarge counts the dispatch messages above
	// ClientOptions.MaxMessage that OnDispatch was not given (Recv and
	// TryRecv return ErrTooLarge for them instead).
	DispatchTooLarge uint64
	// ProgressBytes counts the bytes of large responses copied into a
	// call's result from the server's progress notes (FeatureProgress),
	// while the server was still writing the rest: the part of those
	// copies that overlapped the server's.
	ProgressBytes uint64
}

// Stats returns the client's counters. Safe to call from any goroutine,
// also after Close.
func (cl *Client) Stats() ClientStats {
	return ClientStats{
		CancelsSent:      cl.cancelsSent.Load(),
		CancelsDropped:   cl.cancelsDropped.Load(),
		DispatchTooLarge: cl.dispatchTooLarge.Load(),
		ProgressBytes:    cl.progressBytes.Load(),
	}
}
