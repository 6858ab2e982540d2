// Package sockshare owns clusterd's listening sockets: it parses listen
// addresses, creates sockets with the options a server farm needs, hands them from
// process to process, and speaks the systemd socket-activation protocol in both
// directions. It imports only the standard library and golang.org/x/sys/unix, knows
// nothing of masters and workers, and never logs: every function returns an error
// that names its subject (address, descriptor, variable), and callers decide.
//
// # Model
//
// A listening socket is created once, by the process that owns the address (the
// clusterd master, or systemd), and shared: every process that holds a descriptor
// of it may accept from its one queue, and the kernel hands each connection to
// one accept call. Sockets move between processes in two ways:
//
//   - By inheritance at exec: the parent places them at descriptors 3, 4, ... of
//     the child and describes them with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES
//     ([ListenEnv] builds that environment, [Files] and [Listeners] read it in the
//     child). This is systemd's protocol, so a server that knows it runs under
//     clusterd and under systemd alike, and a Go server can use this package alone.
//   - Over a unix socket with SCM_RIGHTS while both run ([SendFDs], [RecvFDs], and
//     the lower-level [RightsControl] and [ParseRecvRights] for a custom
//     sendmsg/recvmsg loop such as clusterd's ipc package).
//
// The flow of a master is [ParseSpec] then [Listen], giving an *os.File per address;
// each child inherits those files through exec.Cmd.ExtraFiles (or its own fork
// code) with the environment from [ListenEnv]. A worker calls [Listeners] (or
// [Files] and then [Sockets]) and serves.
//
// # Descriptor ownership
//
// Every function states who closes what it returns and whether it is a dup. In
// short: [Listen], [Files], [RecvFDs] and [Dup] give the caller *os.File values it
// must close; [Sockets] returns dups and leaves its arguments to the caller;
// [Listeners] returns dups and closes the inherited descriptors; [SendFDs] and
// [RightsControl] never take ownership of the descriptors they send. Every
// descriptor this package creates is close-on-exec from its first instant
// (SOCK_CLOEXEC, F_DUPFD_CLOEXEC, MSG_CMSG_CLOEXEC), and [Files] marks the
// inherited ones so, so nothing leaks into programs started later; only
// exec.Cmd.ExtraFiles (or the equivalent) passes a descriptor on, deliberately. No
// path leaks a descriptor, errors included: a truncated control message closes
// what arrived.
//
// # Blocking mode: the pitfall
//
// O_NONBLOCK belongs to the open file description, which every process holding
// the socket shares. Go's [os.File.Fd] switches a descriptor to blocking mode if Go
// itself put it in non-blocking mode, and it does so for files from package net's
// File methods; exec.Cmd.ExtraFiles calls Fd. A master that passed such a file would
// switch the socket to blocking for every worker at once, and a worker's runtime
// would then block a thread in accept. This package avoids it: the files it returns
// are made with [os.NewFile] from descriptors that are already non-blocking, and
// Fd on those changes nothing. It reads and sets socket state through
// [os.File.SyscallConn] only, and never switches a socket to blocking mode. The one
// change it makes is the other way: [Sockets] (like package net) needs a socket in
// non-blocking mode, and leaves a socket inherited in blocking mode non-blocking.
//
// # Unix sockets
//
// A unix socket file outlives the process that bound it. [Listen] removes an
// existing file only when it is a socket and connect(2) to it is refused, that is
// when no process listens on it any more; a live socket or another kind of file is
// an "address in use" error and stays untouched. Abstract sockets ("@name", Linux
// only) have no file and vanish with their last descriptor. Listen does not remove
// the socket file when the socket is closed: the owner of the address does that
// when it stops for good (a master that hands its sockets to a new master must not).
//
// # Platforms
//
// Listen specs, the socket-activation environment and [Socket] are portable. The
// rest is implemented for Linux; on other systems it compiles, and returns errors
// wrapping [errors.ErrUnsupported], so that programs linking clusterd's worker
// library build everywhere.
package sockshare
