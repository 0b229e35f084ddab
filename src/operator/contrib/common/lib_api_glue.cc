/*!
 * \file lib_api_glue.cc
 * \brief MXNet's extension-API glue (the lib_api.cc of the mxnet wheel), compiled into this
 *        library with its error-message export replaced, and how our operators report errors.
 *
 * MXNet 1.9 hands a library's error messages over by calling the library's `_msgGet(i, &text)`
 * for each message after a failed call. The lib_api.cc that ships with it answers with
 * `new std::string(...)`, which nobody deletes: every failed call (a wrong parameter, shape or
 * RoI index) leaked its message, about 1.2 KB with the allocations around it. The file is
 * compiled here as it ships, except that its `_msgGet` is renamed out of the way so that the
 * one below, which leaks nothing, is the one MXNet finds.
 */
#define _msgGet mxnet_lib_api_msgGet_leaking_replaced_below
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-copy"  // MXTensor's implicit copy, in MXNet's code
#include <lib_api.cc>  // NOLINT: MXNet's source file, found in <mxnet wheel>/src
#pragma GCC diagnostic pop
#undef _msgGet

#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "ext_util.h"

namespace dcnv2_mx {

namespace {

// MXNet 1.9 appends every extension error to one list that it never clears, so each error
// would also repeat every earlier one. The list is private; an explicit template instantiation
// may name private members ([temp.spec]/6), which reaches it without patching MXNet's header.
using MessageList = std::vector<std::stringstream*>;
using MessageListMember = MessageList mxnet::ext::MXerrorMsgs::*;
MessageListMember message_list();
template <MessageListMember kMember>
struct MessageListAccess {
  friend MessageListMember message_list() { return kMember; }
};
template struct MessageListAccess<&mxnet::ext::MXerrorMsgs::messages>;

/*! \brief Guards the list: MXNet may run operators, and fetch their errors, on several threads. */
std::mutex message_list_mutex;

}  // namespace

void report_error(const char* op_name, const std::string& message) {
  const std::lock_guard<std::mutex> lock(message_list_mutex);
  MessageList& earlier = mxnet::ext::MXerrorMsgs::get()->*message_list();
  for (std::stringstream* m : earlier) delete m;
  earlier.clear();
  // Messages of the parameter and shape checks already start with the operator name.
  if (message.rfind(op_name, 0) == 0)
    MX_ERROR_MSG << message;
  else
    MX_ERROR_MSG << op_name << ": " << message;
}

}  // namespace dcnv2_mx

/*!
 * \brief Message `idx` of the list, as MXNet fetches it after a failed call. The text lives in
 *        a per-thread buffer until this thread's next fetch: MXNet copies it at once.
 */
extern "C" MX_VOID_RET _msgGet(int idx, const char** msg) {
  thread_local std::string text;
  {
    const std::lock_guard<std::mutex> lock(dcnv2_mx::message_list_mutex);
    const dcnv2_mx::MessageList& list =
        mxnet::ext::MXerrorMsgs::get()->*dcnv2_mx::message_list();
    // Another thread's error may have replaced the list since MXNet asked for its size.
    text = idx >= 0 && static_cast<size_t>(idx) < list.size() ? list[idx]->str() : "";
  }
  *msg = text.c_str();
}
