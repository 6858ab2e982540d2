// Package sockshare owns clusterd's listening sockets.
package sockshare
