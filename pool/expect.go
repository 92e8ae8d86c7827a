package pool

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"time"
)

// resolveContinue tells the writer whether to send the held-back body.
func (x *exchange) resolveContinue(send bool) {
	if x.continueCh != nil && !x.continueSent {
		x.continueSent = true
		x.continueCh <- send
	}
}

// awaitContinue runs on the writer: the body goes after a 100 Continue,
// or after ExpectContinueTimeout with no answer at all.
func (x *exchange) awaitContinue() bool {
	t := time.NewTimer(x.eff.ExpectContinueTimeout)
	defer t.Stop()
	select {
	case send := <-x.continueCh:
		return send
	case <-t.C:
		return true
	case <-x.ctx.Done():
		return false
	}
}

// nopCloserTypes are the types io.NopCloser returns.
var nopCloserTypes = [...]reflect.Type{
	reflect.TypeOf(io.NopCloser(struct{ io.Reader }{})),
	reflect.TypeOf(io.NopCloser(strings.NewReader(""))),
}

// inMemory mirrors net/http's list of bodies it knows cannot block or
// fail, looking through io.NopCloser as it does.
func inMemory(r io.Reader) bool {
	switch r.(type) {
	case *bytes.Reader, *bytes.Buffer, *strings.Reader:
		return true
	}
	v := reflect.ValueOf(r)
	for _, t := range nopCloserTypes {
		if v.Type() == t {
			inner, ok := v.Field(0).Interface().(io.Reader)
			return ok && inMemory(inner)
		}
	}
	return false
}
