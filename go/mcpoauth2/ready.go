package mcpoauth2

/*
#include <stdint.h>
#include "mcp_oauth2.h"
mcp_oauth2_result mcpoauth2_on_ready(const mcp_oauth2_pending *pending, uintptr_t handle);
*/
import "C"

import "runtime/cgo"

// Ready returns a channel that is closed when the answer a waiting pending (StateWait)
// waits for is in; then call Continue. Select on it together with a timer of MaxWait and
// your context. Call it once per wait: each call registers a callback with the library,
// which runs once, on the thread that completes the awaited call, and only closes the
// channel.
func (p *Pending) Ready() (<-chan struct{}, error) {
	ch := make(chan struct{})
	h := cgo.NewHandle(ch)
	if err := check(C.mcpoauth2_on_ready(p.p, C.uintptr_t(h))); err != nil {
		h.Delete()
		return nil, err
	}
	return ch, nil
}

//export mcpoauth2GoReady
func mcpoauth2GoReady(handle C.uintptr_t) {
	h := cgo.Handle(handle)
	ch := h.Value().(chan struct{})
	h.Delete()
	close(ch)
}
