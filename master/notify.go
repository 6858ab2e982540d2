package master

import "bytes"

// parseNotify turns an sd_notify datagram into the events clusterd acts on.
func parseNotify(msg []byte) []workerEvent {
	var evs []workerEvent
	for _, line := range bytes.Split(msg, []byte{'\n'}) {
		switch string(line) {
		case "READY=1":
			evs = append(evs, workerEvent{kind: evReady, source: ReadyNotify})
		case "STOPPING=1":
			evs = append(evs, workerEvent{kind: evStopping})
		case "WATCHDOG=1":
			evs = append(evs, workerEvent{kind: evWatchdog})
		}
	}
	return evs
}
